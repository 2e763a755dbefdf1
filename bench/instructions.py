"""Instructions per hook call and per bare-app call, counted by valgrind (callgrind).

Throughput on a shared machine swings with the neighbours' load; an instruction count does not
(the same code, body and Python give the same count within 0.1%). Use it to compare two versions
of the code; it does not see memory stalls (the garbage collector's cost is mostly those) nor
thread contention, which bench.py measures.

    .venv/bin/python bench/instructions.py                 # 200 and 1,000 resources: about a minute
    .venv/bin/python bench/instructions.py --sizes 10000

Each count runs one process under valgrind with instrumentation off, builds the app (the service
as `serve` would: recording on, log lines at INFO to /dev/null, authentication off; or
bench/bare_app.py), makes three warm-up calls through WSGI, then counts only the measured calls.
Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WARMUP_CALLS = 3


def calls_for(size: int) -> int:
    """Enough calls to dwarf the toggling, few enough to finish in seconds under valgrind."""
    return max(1, 4000 // size)


def inner(side: str, size: int, calls: int) -> None:
    """Runs under valgrind: build the app, warm up, count `calls` WSGI calls."""
    sys.path[:0] = [str(ROOT), str(BENCH_DIR)]
    import json

    from werkzeug.test import EnvironBuilder

    from bench import HOOK_PATH, request_with_size

    if side == "hook":
        _writer_batches_at_load()
        from cds_service.cli.main import configure_logging
        from cds_service.web.app import create_app
        from cds_service.web.config import Settings

        for key in [key for key in os.environ if key.startswith("CDS_")]:
            del os.environ[key]  # not the shell's database, trust or mode
        os.environ.update(
            CDS_FEEDBACK_DB=str(Path(tempfile.mkdtemp()) / "instructions.sqlite3"), CDS_ALLOW_UNAUTHENTICATED="1"
        )
        configure_logging("INFO")
        # the process ends with the measurement: the file closes with it
        logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115
        app = create_app(Settings.from_env())
    else:
        from bare_app import app
    from cds_service.cli.main import tune_gc_for_serving

    tune_gc_for_serving()  # as `serve` does in each worker (and bare_app.py at import)
    payload = json.dumps(request_with_size(size)).encode()
    environs = [
        EnvironBuilder(path=HOOK_PATH, method="POST", data=payload, content_type="application/json").get_environ()
        for _ in range(WARMUP_CALLS + calls)
    ]

    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise SystemExit(f"the {side} answered {status}")

    for environ in environs[:WARMUP_CALLS]:
        b"".join(app(environ, start_response))
    _flush_writers()  # the warm-up's cards, before counting
    subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    for environ in environs[WARMUP_CALLS:]:
        b"".join(app(environ, start_response))
    _flush_writers()  # the measured cards, written as one batch: counted
    subprocess.run(["callgrind_control", "--instr=off", str(os.getpid())], check=True, capture_output=True)


WRITER_MODULES = ("cds_service.utilization.spool", "cds_service.store")  # this layout, and the one before it


def _writer_batches_at_load() -> None:
    """The recording writer wakes every 0.5 s and writes what came in. Under valgrind one call
    takes about that long, so it would write one card a round, paying a round's fixed cost (a file,
    a transaction) per card; under real load a round holds dozens. So it sleeps here, and the
    measured cards are written as one batch inside the count (_flush_writers)."""
    import importlib

    for name in WRITER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "BATCH_SECONDS"):
            module.BATCH_SECONDS = 3600


def _flush_writers() -> None:
    import gc

    for item in gc.get_objects():
        if type(item).__name__ == "EvaluationWriter" and hasattr(item, "flush"):
            item.flush()


def parse_collected(valgrind_output: str) -> int:
    """The instruction count callgrind reports at exit ("Collected : N")."""
    match = re.search(r"Collected\s*:\s*([\d,]+)", valgrind_output)
    if match is None:
        raise RuntimeError(f"valgrind reported no count:\n{valgrind_output[-2000:]}")
    return int(match.group(1).replace(",", ""))


def count(side: str, size: int, calls: int) -> float:
    """Instructions per call."""
    with tempfile.TemporaryDirectory() as tmp:
        finished = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/callgrind.out",
                sys.executable,
                __file__,
                "--inner",
                side,
                str(size),
                str(calls),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if finished.returncode != 0:
            raise RuntimeError(f"the {side} run failed:\n{finished.stderr[-2000:]}")
        return parse_collected(finished.stderr) / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000], help="prefetch sizes (resources)")
    parser.add_argument("--inner", nargs=3, metavar=("SIDE", "SIZE", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        inner(args.inner[0], int(args.inner[1]), int(args.inner[2]))
        return 0
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    print(f"{'resources':>9} {'calls':>5} | {'hook Minstr/call':>16} | {'bare Minstr/call':>16} | {'bare/hook':>9}")
    for size in args.sizes:
        calls = calls_for(size)
        hook, bare = count("hook", size, calls), count("bare", size, calls)
        print(f"{size:>9} {calls:>5} | {hook / 1e6:>16.2f} | {bare / 1e6:>16.2f} | {bare / hook:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
