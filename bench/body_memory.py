"""Peak memory of a server process for one large hook request.

    .venv/bin/python bench/body_memory.py            # about 30 s; --mb 8 --mb 1 for other sizes

Starts `cds-service serve` (1 worker, 1 thread, authentication off) on loopback, sends one
order-select whose prefetch is padded with Observations that match nothing up to the given
size, and prints the worker's resident memory before the request and its peak (VmHWM) after.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service.cli import fixtures  # noqa: E402
from cds_service.cli.processes import free_port, serve_command, stop_process, wait_for_http  # noqa: E402


def padded_body(megabytes: float) -> bytes:
    body = fixtures.hook_request("lbp-osteoporosis")
    filler = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/x"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "0000-0", "display": "padding"}]},
        "effectiveDateTime": "2020-01-01",
        "valueQuantity": {"value": 1, "unit": "1"},
    }
    one = len(json.dumps({"resource": {**filler, "id": "pad-000000"}})) + 2
    count = int(megabytes * 1e6 - len(json.dumps(body))) // one
    entries = body["prefetch"]["observations"].setdefault("entry", [])
    for index in range(count):
        resource = copy.deepcopy(filler)
        resource["id"] = f"pad-{index}"
        entries.append({"resource": resource})
    return json.dumps(body).encode()


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, action="append", help="body size in MB (repeatable; default 30)")
    args = parser.parse_args()
    for megabytes in args.mb or [30.0]:
        raw = padded_body(megabytes)
        port = free_port()
        directory = tempfile.mkdtemp(prefix="cds-mem-")  # removed below
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env.update(
            CDS_ALLOW_UNAUTHENTICATED="1",
            CDS_FEEDBACK_DB=f"{directory}/f.sqlite3",
            CDS_LOG_LEVEL="WARNING",
            CDS_MAX_BODY_BYTES=str(len(raw) + 1),
        )
        service = subprocess.Popen(
            serve_command(port, 1, 1),
            env=env,
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            if not wait_for_http(base + "/healthz", service):
                print("the service did not start", file=sys.stderr)
                return 1
            requests.post(
                base + "/cds-services/spine-mri-order-select",
                json=fixtures.hook_request("lbp-osteoporosis"),
                timeout=30,
            )  # warm: mappings and schemas loaded
            worker = worker_pid(service.pid)
            before = memory_kb(worker)
            started = time.perf_counter()
            reply = requests.post(
                base + "/cds-services/spine-mri-order-select",
                data=raw,
                headers={"Content-Type": "application/json"},
                timeout=300,
            )
            elapsed = time.perf_counter() - started
            after = memory_kb(worker)
            print(
                f"body {len(raw) / 1e6:6.1f} MB -> HTTP {reply.status_code} in {elapsed:5.2f} s; worker RSS before "
                f"{before['VmRSS'] / 1024:6.0f} MB, peak {after['VmHWM'] / 1024:6.0f} MB: "
                f"{(after['VmHWM'] - before['VmRSS']) / 1024:5.0f} MB for this request",
                flush=True,
            )
        finally:
            stop_process(service, 15)
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
