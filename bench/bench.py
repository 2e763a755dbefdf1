"""HTTP benchmark: the hook against a bare Flask app, both on gunicorn, driven by wrk.

Starts the service (`cds-service serve`) and `bench/bare_app.py` (parses the same JSON body with
the same parser and answers `{"cards": []}`) on free loopback ports with the same gunicorn
settings, then for each prefetch size (a fixture padded with resources that match nothing)
alternates wrk runs against the hook and the bare app, and prints throughput, p50/p99 latency,
the server's CPU per request and the hook/bare ratios. Variants, each its own row set: recording
off, auth on (one ES384 verification per call), and the FHIR-server fallback (no prefetch, local
FHIR server). On a shared machine, throughput swings with the neighbours' load; CPU per request
much less, so it is printed too.

    .venv/bin/python bench/bench.py                          # about 5 minutes
    .venv/bin/python bench/bench.py --sizes 200 --variants   # one size, no variants: about 40 s

Needs wrk (`apt-get install wrk`). Without it the script falls back to a Python thread-pool
client, which on a small machine is itself the bottleneck and flatters the ratio; it says so.
Bounded: every run lasts --duration seconds (after one --warmup per size and side); every
server is stopped at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from cds_service.cli import fixtures  # noqa: E402
from cds_service.cli.processes import free_port, serve_command, stop_process, wait_for_http  # noqa: E402

BASE_PATIENT = "lbp-radic-failed-pt"
FILLER_KEYS = ("observations", "conditions", "procedures", "medications")
HOOK_PATH = "/cds-services/spine-mri-order-select"
WRK_SCRIPT = BENCH_DIR / "post.lua"
WRK_INSTALL_HINT = "wrk is not installed: apt-get install wrk"
TOKEN_ISSUER = "urn:spine-imaging-cds:bench-client"
TOKEN_KID = "bench-es384"
VARIANTS = ("recording-off", "auth", "fallback")


def filler(kind: str, patient_id: str, index: int) -> dict:
    """Resources the rules read but that match nothing (heart rate, hypertension, ...)."""
    subject = {"reference": f"Patient/{patient_id}"}
    day = f"2026-{1 + index % 10:02d}-{1 + index % 27:02d}"
    if kind == "observations":
        return {
            "resourceType": "Observation",
            "id": f"fill-obs-{index}",
            "status": "final",
            "subject": subject,
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "effectiveDateTime": day,
            "valueQuantity": {
                "value": 60 + index % 40,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        }
    if kind == "conditions":
        return {
            "resourceType": "Condition",
            "id": f"fill-cond-{index}",
            "subject": subject,
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/sid/icd-10-cm",
                        "code": "I10",
                        "display": "Essential (primary) hypertension",
                    }
                ]
            },
            "onsetDateTime": day,
        }
    if kind == "procedures":
        return {
            "resourceType": "Procedure",
            "id": f"fill-proc-{index}",
            "status": "completed",
            "subject": subject,
            "code": {"text": "Dental cleaning"},
            "performedDateTime": day,
        }
    return {
        "resourceType": "MedicationRequest",
        "id": f"fill-med-{index}",
        "status": "completed",
        "intent": "order",
        "subject": subject,
        "authoredOn": day,
        "medicationCodeableConcept": {"text": "amlodipine 5 mg tablet"},
    }


def count_resources(prefetch: dict) -> int:
    return sum(
        len(value.get("entry", [])) if value.get("resourceType") == "Bundle" else 1
        for value in prefetch.values()
        if isinstance(value, dict)
    )


def request_with_size(total: int) -> dict:
    """The base patient's order-select request, its prefetch padded to `total` resources."""
    body = fixtures.hook_request(BASE_PATIENT, "order-select")
    prefetch = body["prefetch"]
    patient_id = body["context"]["patientId"]
    for index in range(max(total - count_resources(prefetch), 0)):
        kind = FILLER_KEYS[index % len(FILLER_KEYS)]
        bundle = prefetch.get(kind) or {"resourceType": "Bundle", "type": "searchset"}
        prefetch[kind] = bundle
        bundle.setdefault("entry", []).append(
            {"resource": filler(kind, patient_id, index), "search": {"mode": "match"}}
        )
    return body


# --- load generators ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How hard and how long each run pushes: the same for every side and variant."""

    threads: int
    connections: int
    duration: float
    warmup: float
    timeout: float


def parse_wrk_output(text: str) -> dict:
    """The result of one wrk run from the BENCH-RESULT line post.lua's done() prints."""
    line = next((line for line in text.splitlines() if line.startswith("BENCH-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{text[-2000:]}")
    raw = json.loads(line[len("BENCH-RESULT ") :])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "throughput": raw["requests"] / seconds if seconds else 0.0,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "errors": sum(raw["errors"].values()),
        "out_of_tokens": raw["threads_out_of_tokens"] > 0,
    }


class Wrk:
    name = "wrk"

    def __init__(self, executable: str, load: Load):
        self.executable = executable
        self.load = load

    def describe(self) -> str:
        load = self.load
        return (
            f"wrk ({self.executable}): {load.threads} threads, {load.connections} connections, "
            f"{load.duration:g} s per run after a {load.warmup:g} s warm-up per size and side, "
            f"timeout {load.timeout:g} s, script bench/post.lua"
        )

    def run(self, url: str, body_path: Path, seconds: float, token_prefix: Path | None = None) -> dict:
        load = self.load
        command = [
            self.executable,
            f"-t{load.threads}",
            f"-c{load.connections}",
            f"-d{seconds:g}s",
            f"--timeout={load.timeout:g}s",
            "-s",
            str(WRK_SCRIPT),
            url,
            "--",
            str(body_path),
        ]
        if token_prefix is not None:
            command.append(str(token_prefix))
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + load.timeout + 30)
        return parse_wrk_output(finished.stdout + finished.stderr)


class PythonClient:
    """The fallback: a thread pool of `requests` sessions. It competes with the server for the
    same cores and caps both sides near the same number, so its ratios look better than they are."""

    name = "python"

    def __init__(self, load: Load):
        self.load = load

    def describe(self) -> str:
        return (
            f"Python thread-pool client (requests): {self.load.connections} concurrent, "
            f"{self.load.duration:g} s per run; FLATTERS THE RATIO (the client is the bottleneck)"
        )

    def run(self, url: str, body_path: Path, seconds: float, token_prefix: Path | None = None) -> dict:
        payload = body_path.read_bytes()
        tokens = []
        if token_prefix is not None:
            for path in sorted(token_prefix.parent.glob(token_prefix.name + ".*")):
                tokens += path.read_text().split()
        token_lock = threading.Lock()
        deadline = time.perf_counter() + seconds
        out_of_tokens = threading.Event()

        def worker(_):
            session = requests.Session()
            latencies, errors = [], 0
            while time.perf_counter() < deadline:
                headers = {"Content-Type": "application/json"}
                if token_prefix is not None:
                    with token_lock:
                        if not tokens:
                            out_of_tokens.set()
                            break
                        headers["Authorization"] = f"Bearer {tokens.pop()}"
                started = time.perf_counter()
                try:
                    ok = session.post(url, data=payload, headers=headers, timeout=self.load.timeout).ok
                except requests.RequestException:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok
            return latencies, errors

        started = time.perf_counter()
        with ThreadPoolExecutor(self.load.connections) as pool:
            results = list(pool.map(worker, range(self.load.connections)))
        wall = time.perf_counter() - started
        latencies = sorted(latency for result in results for latency in result[0])
        if not latencies:
            return {
                "requests": 0,
                "throughput": 0.0,
                "p50_ms": math.nan,
                "p99_ms": math.nan,
                "errors": 0,
                "out_of_tokens": out_of_tokens.is_set(),
            }
        return {
            "requests": len(latencies),
            "throughput": len(latencies) / wall,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "errors": sum(result[1] for result in results),
            "out_of_tokens": out_of_tokens.is_set(),
        }


# --- servers -----------------------------------------------------------------------------------


class Server:
    """A gunicorn server on a free loopback port; its stderr goes to a log file (tail shown on failure)."""

    def __init__(self, name: str, command: list[str], env: dict, workdir: Path, log_dir: Path, port: int):
        self.name, self.command, self.env, self.workdir, self.port = name, command, env, workdir, port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=log
            )
        if not wait_for_http(f"{self.base}/healthz", self.process, seconds=60):
            self.__exit__()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
        return self

    def __exit__(self, *_exc) -> None:
        stop_process(self.process, 20)

    def cpu_seconds(self) -> float:
        """User + system CPU of the gunicorn master and its workers so far (NaN without /proc)."""
        try:
            pids = [self.process.pid] + [
                int(child)
                for child in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            ]
            ticks = 0
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
        except (OSError, ValueError, IndexError):
            return math.nan
        return ticks / os.sysconf("SC_CLK_TCK")

    def health(self) -> dict:
        return requests.get(f"{self.base}/healthz", timeout=5).json()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


def clean_environment() -> dict:
    """The caller's environment without any CDS_ setting, so a run does not depend on the shell."""
    return {key: value for key, value in os.environ.items() if not key.startswith("CDS_")}


def service_server(name: str, args, tmp: Path, settings: dict) -> Server:
    port = free_port()
    env = dict(clean_environment(), CDS_FEEDBACK_DB=str(tmp / f"{name}.sqlite3"), **settings)
    command = serve_command(port, args.workers, args.server_threads)
    return Server(name, command, env, ROOT, tmp, port)


def bare_server(args, tmp: Path) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(BENCH_DIR),
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.server_threads),
        "bare_app:app",
    ]
    return Server("bare", command, clean_environment(), ROOT, tmp, port)


def recording_reported(health: dict) -> str | None:
    """What the service's /healthz says about recording evaluations, if it says anything."""
    for key, value in health.items():
        if "record" in key.lower():
            return f"{key}={json.dumps(value)}"
    return None


# --- tokens for the auth variant ---------------------------------------------------------------


class TokenMint:
    """A client key pair the auth server trusts, and single-use tokens for each wrk thread."""

    def __init__(self, directory: Path):
        from cds_service.web.auth import generate_key_pair

        self.directory = directory
        self.pem, jwk = generate_key_pair(TOKEN_KID)
        self.trusted_issuers = directory / "trusted-issuers.json"
        self.trusted_issuers.write_text(json.dumps({TOKEN_ISSUER: {"jwks": {"keys": [jwk]}}}))
        self.batches = 0

    def write(self, audience: str, count: int, threads: int) -> Path:
        """`count` fresh tokens split over `threads` files PREFIX.1 .. PREFIX.N; returns PREFIX."""
        from cds_service.web.auth import sign_token

        self.batches += 1
        prefix = self.directory / f"tokens-{self.batches}"
        per_thread = math.ceil(count / threads)
        for thread in range(1, threads + 1):
            tokens = (
                sign_token(TOKEN_ISSUER, self.pem, audience, TOKEN_KID, lifetime_seconds=300) for _ in range(per_thread)
            )
            Path(f"{prefix}.{thread}").write_text("\n".join(tokens) + "\n")
        return prefix


# --- the runs ----------------------------------------------------------------------------------


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def summarise(hook_runs: list[dict], bare_runs: list[dict]) -> dict:
    ratios = [
        hook["throughput"] / bare["throughput"]
        for hook, bare in zip(hook_runs, bare_runs, strict=True)  # runs come in pairs
        if bare["throughput"]
    ]
    return {
        "hook": hook_runs,
        "bare": bare_runs,
        "ratio": statistics.median(ratios) if ratios else math.nan,
        "ratio_range": (min(ratios), max(ratios)) if ratios else (math.nan, math.nan),
        "cpu_ratio": median_of(bare_runs, "cpu_ms") / median_of(hook_runs, "cpu_ms"),
    }


def side_columns(runs: list[dict]) -> str:
    return (
        f"{median_of(runs, 'throughput'):>10.1f} {median_of(runs, 'p50_ms'):>8.1f} {median_of(runs, 'p99_ms'):>8.1f}"
        f" {median_of(runs, 'cpu_ms'):>7.2f}"
    )


def problems(runs: list[dict]) -> str:
    errors = sum(run["errors"] for run in runs)
    notes = [f"{errors} errors"] if errors else []
    if any(run["out_of_tokens"] for run in runs):
        notes.append("ran out of tokens: raise --token-margin")
    return f"  ({'; '.join(notes)})" if notes else ""


TABLE_HEADER = (
    f"{'resources':>9} {'body KB':>8} | {'hook req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>7} | "
    f"{'bare req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>7} | {'ratio':>5} {'(range)':>11} "
    f"{'cpu ratio':>9}"
)


def format_row(size: int, body_bytes: int, summary: dict, extra: str = "") -> str:
    low, high = summary["ratio_range"]
    return (
        f"{size:>9} {body_bytes / 1024:>8.0f} | {side_columns(summary['hook'])} | "
        f"{side_columns(summary['bare'])} | {summary['ratio']:>5.2f} {f'({low:.2f}-{high:.2f})':>11} "
        f"{summary['cpu_ratio']:>9.2f}{extra}" + problems(summary["hook"] + summary["bare"])
    )


def growth_lines(rows: list[tuple[int, dict]]) -> list[str]:
    """Hook p50 vs resource count between neighbouring sizes, as the exponent k in p50 ~ n^k."""
    lines = []
    for (small, low), (large, high) in itertools.pairwise(rows):
        p50_low, p50_high = median_of(low["hook"], "p50_ms"), median_of(high["hook"], "p50_ms")
        exponent = math.log(p50_high / p50_low) / math.log(large / small)
        lines.append(
            f"  {small:>6} -> {large:>6} resources: p50 x{p50_high / p50_low:.2f} for x{large / small:g} "
            f"resources, exponent {exponent:.2f}"
        )
    return lines


class Bench:
    def __init__(self, args, client, tmp: Path):
        self.args, self.client, self.tmp = args, client, tmp
        self.bodies: dict[int, Path] = {}
        self.base_rows: dict[int, dict] = {}

    def body_file(self, size: int) -> Path:
        if size not in self.bodies:
            path = self.tmp / f"body-{size}.json"
            path.write_text(json.dumps(request_with_size(size)))
            self.bodies[size] = path
        return self.bodies[size]

    def measure(self, server: Server, body: Path, warm: bool, tokens=None) -> dict:
        """One measured run (after a warm-up run if `warm`), with the server's CPU per request;
        `tokens(seconds)` gives a fresh token prefix."""
        url = server.base + HOOK_PATH
        if warm and self.args.warmup > 0:
            self.client.run(url, body, self.args.warmup, tokens(self.args.warmup) if tokens else None)
        cpu_before = server.cpu_seconds()
        result = self.client.run(url, body, self.args.duration, tokens(self.args.duration) if tokens else None)
        cpu = server.cpu_seconds() - cpu_before
        result["cpu_ms"] = cpu / result["requests"] * 1000 if result["requests"] else math.nan
        return result

    def alternate(self, sides: list[tuple[str, Server, object]], body: Path) -> dict[str, list[dict]]:
        """--repeats rounds of one run per side, in turn: noise on a shared machine hits every side alike."""
        runs = {name: [] for name, _, _ in sides}
        for round_index in range(self.args.repeats):
            for name, server, tokens in sides:
                runs[name].append(self.measure(server, body, warm=round_index == 0, tokens=tokens))
        return runs

    def hook_vs_bare(self, hook: Server, bare: Server, size: int, tokens=None) -> dict:
        runs = self.alternate([("hook", hook, tokens), ("bare", bare, None)], self.body_file(size))
        return summarise(runs["hook"], runs["bare"])

    def table(
        self, title: str, hook: Server, bare: Server, sizes: list[int], tokens_for=None, versus_base: bool = False
    ) -> list[tuple]:
        """One row per size; `versus_base` adds the hook's req/s over the base table's at that size."""
        print(f"\n{title}")
        print(TABLE_HEADER + ("  vs base hook" if versus_base else ""))
        print("-" * len(TABLE_HEADER))
        rows = []
        for size in sizes:
            tokens = tokens_for(size) if tokens_for else None
            summary = self.hook_vs_bare(hook, bare, size, tokens)
            extra = ""
            if versus_base and size in self.base_rows:
                base_hook = median_of(self.base_rows[size]["hook"], "throughput")
                extra = f"  {median_of(summary['hook'], 'throughput') / base_hook:>12.2f}"
            print(format_row(size, self.body_file(size).stat().st_size, summary, extra), flush=True)
            rows.append((size, summary))
        return rows


BASE_TITLE = (
    "hook (recording on, no auth) vs bare app; medians of the rounds; ratio = hook/bare req/s per round; "
    "cpu ms = server CPU per request (all gunicorn processes); cpu ratio = bare/hook cpu ms"
)


def fallback_rows(bench: Bench, service: Server, fhir_base: str) -> list[dict]:
    from cds_service.cli.local_fhir import seed_bundle

    seed_bundle(fhir_base, fixtures.patient_bundle(BASE_PATIENT))
    full = fixtures.hook_request(BASE_PATIENT, "order-select")
    full["fhirServer"] = fhir_base
    empty = dict(full, prefetch={})
    paths = {}
    for name, body in (("full prefetch", full), ("no prefetch (8 queries)", empty)):
        paths[name] = bench.tmp / f"fallback-{len(paths)}.json"
        paths[name].write_text(json.dumps(body))
    runs = {name: [] for name in paths}
    for round_index in range(bench.args.repeats):
        for name, path in paths.items():
            runs[name].append(bench.measure(service, path, warm=round_index == 0))
    print(
        f"\nFHIR-server fallback (local FHIR server on loopback, same patient, allowlisted; {bench.client.name}; "
        "cpu ms: the service's, not the FHIR server's):"
    )
    print(f"{'request':>24} | {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>7}")
    for name, results in runs.items():
        print(
            f"{name:>24} | {median_of(results, 'throughput'):>7.1f} {median_of(results, 'p50_ms'):>8.1f} "
            f"{median_of(results, 'p99_ms'):>8.1f} {median_of(results, 'cpu_ms'):>7.2f}" + problems(results)
        )
    return [run for results in runs.values() for run in results]


def fallback_concurrency(fhir_base: str) -> None:
    """How concurrent the 8 queries of one hook are, in-process, one hook at a time."""
    from cds_service.clinical.mappings import get_mappings
    from cds_service.fhir.client import FhirFetcher, FhirSettings
    from cds_service.hooks.evaluation import evaluate_hook

    body = fixtures.hook_request(BASE_PATIENT, "order-select")
    body.update(fhirServer=fhir_base, prefetch={})
    fetcher = FhirFetcher(FhirSettings(allowed_servers=frozenset({fhir_base}), budget_seconds=5))
    sums, slowest, totals = [], [], []
    for _ in range(30):
        timings = evaluate_hook(
            "spine-mri-order-select", json.loads(json.dumps(body)), get_mappings(), fetcher=fetcher
        ).timings_ms
        sums.append(timings["fhir_sum"])
        slowest.append(timings["fhir_slowest"])
        totals.append(timings["fhir"])
    print(
        f"queries, one hook at a time in-process (median of 30): sum of the 8 queries "
        f"{statistics.median(sums):.1f} ms, slowest query {statistics.median(slowest):.1f} ms, "
        f"all 8 concurrently {statistics.median(totals):.1f} ms"
    )


def machine_line() -> str:
    model = ""
    with suppress(OSError):
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores{f' ({model})' if model else ''}, {platform.system()}, "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def reproduce_command(args) -> str:
    parts = [
        ".venv/bin/python",
        "bench/bench.py",
        "--sizes",
        *map(str, args.sizes),
        "--repeats",
        str(args.repeats),
        "--duration",
        f"{args.duration:g}",
        "--warmup",
        f"{args.warmup:g}",
        "--threads",
        str(args.threads),
        "--connections",
        str(args.connections),
        "--workers",
        str(args.workers),
        "--server-threads",
        str(args.server_threads),
        "--variants",
        *args.variants,
        "--variant-sizes",
        *map(str, args.variant_sizes),
    ]
    if args.python_client:
        parts.append("--python-client")
    return shlex.join(parts)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[50, 200, 1000, 10000],
        help="prefetch sizes (resources) of the main table",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds per size; hook and bare alternate in each")
    parser.add_argument(
        "--duration", type=int, default=8, help="seconds per measured run (whole seconds: wrk takes no fractions)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per size and side (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (Python client: concurrency)")
    parser.add_argument("--timeout", type=int, default=30, help="seconds before a request counts as timed out")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("CDS_WORKERS", "4")),
        help="gunicorn workers, both servers (default: CDS_WORKERS or the service's 4)",
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=int(os.environ.get("CDS_THREADS", "2")),
        help="gunicorn threads per worker, both servers (default: CDS_THREADS or the service's 2)",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="extra row sets; give the flag alone for none",
    )
    parser.add_argument(
        "--variant-sizes",
        type=int,
        nargs="+",
        default=[200],
        help="prefetch sizes of the recording-off and auth row sets",
    )
    parser.add_argument(
        "--token-margin",
        type=float,
        default=2.0,
        help="auth: tokens signed per run = margin x the base hook's req/s x seconds",
    )
    parser.add_argument(
        "--python-client",
        action="store_true",
        help="use the Python client even if wrk is installed (to compare; flatters the ratio)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.duration <= 0 or args.connections < args.threads or args.threads < 1:
        parser.error("need --repeats >= 1, --duration > 0, --threads >= 1 and --connections >= --threads")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    load = Load(args.threads, args.connections, args.duration, args.warmup, args.timeout)
    wrk = shutil.which("wrk")
    if wrk and not args.python_client:
        client = Wrk(wrk, load)
    else:
        if not wrk:
            print(
                f"*** {WRK_INSTALL_HINT}. Falling back to the Python client: it shares the cores with the "
                "server and caps both sides, so the ratios below are FLATTERED. ***",
                file=sys.stderr,
            )
        client = PythonClient(load)
    tmp = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    fhir_port = free_port()
    fhir_base = f"http://127.0.0.1:{fhir_port}/fhir"
    # No auth in the base rows: they measure the clinical path; the auth row set adds the JWT check.
    base_settings = {
        "CDS_ALLOW_UNAUTHENTICATED": "1",
        "CDS_RECORD_EVALUATIONS": "1",
        "CDS_FHIR_ALLOWED_SERVERS": fhir_base,
    }
    print(machine_line())
    print(
        f"servers: gunicorn gthread, {args.workers} workers x {args.server_threads} threads, each "
        f"(service: cds-service serve, log level INFO to a file; bare: bench/bare_app.py)"
    )
    print(f"load: {client.describe()}; {args.repeats} rounds per size, hook and bare alternating")
    print(f"reproduce: {reproduce_command(args)}", flush=True)
    all_runs = []
    try:
        with ExitStack() as servers:
            bare = servers.enter_context(bare_server(args, tmp))
            bench = Bench(args, client, tmp)
            with service_server("hook", args, tmp, base_settings) as hook:
                rows = bench.table(BASE_TITLE, hook, bare, args.sizes)
                bench.base_rows = dict(rows)
                if len(rows) > 1:
                    print("\nhook p50 growth with the resource count (exponent <= 1: no worse than linear):")
                    print("\n".join(growth_lines(rows)))
                if "fallback" in args.variants:
                    from cds_service.cli.local_fhir import LocalFhirServer

                    fhir = LocalFhirServer(fhir_port)
                    try:
                        fhir.start()
                    except RuntimeError as error:
                        print(f"\nFHIR-server fallback skipped: {error}")
                    else:
                        try:
                            all_runs += fallback_rows(bench, hook, fhir_base)
                            fallback_concurrency(fhir_base)
                        finally:
                            fhir.stop()
            all_runs += [run for _, summary in rows for run in summary["hook"] + summary["bare"]]
            if "recording-off" in args.variants:
                with service_server(
                    "hook-recording-off", args, tmp, dict(base_settings, CDS_RECORD_EVALUATIONS="0")
                ) as hook:
                    reported = recording_reported(hook.health())
                    note = (
                        f"/healthz reports {reported}"
                        if reported
                        else "/healthz does not report recording: this version may ignore the setting and still record"
                    )
                    rows = bench.table(
                        f"recording off (CDS_RECORD_EVALUATIONS=0; {note}); last column: hook req/s "
                        "over the base table's",
                        hook,
                        bare,
                        args.variant_sizes,
                        versus_base=True,
                    )
                    all_runs += [run for _, summary in rows for run in summary["hook"] + summary["bare"]]
            if "auth" in args.variants:
                mint = TokenMint(tmp)
                auth_settings = dict(base_settings, CDS_TRUSTED_ISSUERS=str(mint.trusted_issuers))
                del auth_settings["CDS_ALLOW_UNAUTHENTICATED"]
                with service_server("hook-auth", args, tmp, auth_settings) as hook:

                    def tokens_for(size):
                        base = bench.base_rows.get(size)
                        rate = median_of(base["hook"], "throughput") if base else 2000.0

                        def prefix(seconds):
                            count = int(args.token_margin * rate * seconds) + 50 * args.threads
                            return mint.write(hook.base + HOOK_PATH, count, args.threads)

                        return prefix

                    rows = bench.table(
                        "auth on (ES384 JWT per call, single-use jti, aud = the URL); last column: "
                        "hook req/s over the base table's",
                        hook,
                        bare,
                        args.variant_sizes,
                        tokens_for,
                        versus_base=True,
                    )
                    all_runs += [run for _, summary in rows for run in summary["hook"] + summary["bare"]]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    failed = any(run["errors"] or run["out_of_tokens"] for run in all_runs)
    if failed:
        print("some runs had errors (see the rows marked above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
