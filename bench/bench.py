"""HTTP benchmark: the real server, concurrent hook requests, prefetch of growing size.

Starts `cds-service serve` on a free loopback port with the bare endpoint enabled, then for
each prefetch size sends the same request body to the order-select hook and to
`/_bench/bare` (which only parses the JSON and answers empty cards), and prints throughput,
p50/p99 latency and the hook/bare throughput ratio.

    .venv/bin/python bench/bench.py                 # default sizes 50 200 1000 10000
    .venv/bin/python bench/bench.py --sizes 200 --requests 400 --concurrency 8

Bounded: every scenario sends a fixed number of requests; the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service import fixtures  # noqa: E402
from cds_service.processes import free_port, wait_for_http  # noqa: E402

BASE_PATIENT = "lbp-radic-failed-pt"
FILLER_KEYS = ("observations", "conditions", "procedures", "medications")



def filler(kind: str, patient_id: str, index: int) -> dict:
    """Resources the rules read but that match nothing (heart rate, hypertension, ...)."""
    subject = {"reference": f"Patient/{patient_id}"}
    day = f"2026-{1 + index % 10:02d}-{1 + index % 27:02d}"
    if kind == "observations":
        return {"resourceType": "Observation", "id": f"fill-obs-{index}", "status": "final", "subject": subject,
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                "effectiveDateTime": day, "valueQuantity": {"value": 60 + index % 40, "unit": "/min",
                                                            "system": "http://unitsofmeasure.org", "code": "/min"}}
    if kind == "conditions":
        return {"resourceType": "Condition", "id": f"fill-cond-{index}", "subject": subject,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10",
                                     "display": "Essential (primary) hypertension"}]},
                "onsetDateTime": day}
    if kind == "procedures":
        return {"resourceType": "Procedure", "id": f"fill-proc-{index}", "status": "completed", "subject": subject,
                "code": {"text": "Dental cleaning"}, "performedDateTime": day}
    return {"resourceType": "MedicationRequest", "id": f"fill-med-{index}", "status": "completed",
            "intent": "order", "subject": subject, "authoredOn": day,
            "medicationCodeableConcept": {"text": "amlodipine 5 mg tablet"}}


def request_with_size(total: int) -> bytes:
    body = fixtures.hook_request(BASE_PATIENT, "order-select")
    prefetch = body["prefetch"]
    patient_id = body["context"]["patientId"]
    present = sum(len(v.get("entry", [])) if isinstance(v, dict) and v.get("resourceType") == "Bundle" else 1
                  for v in prefetch.values() if v)
    for index in range(max(total - present, 0)):
        kind = FILLER_KEYS[index % len(FILLER_KEYS)]
        bundle = prefetch.setdefault(kind, {"resourceType": "Bundle", "type": "searchset", "entry": []})
        bundle.setdefault("entry", []).append({"resource": filler(kind, patient_id, index),
                                               "search": {"mode": "match"}})
    return json.dumps(body).encode()


def drive(url: str, payload: bytes, count: int, concurrency: int) -> dict:
    local = threading.local()
    headers = {"Content-Type": "application/json"}

    def one(_):
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        started = time.perf_counter()
        reply = session.post(url, data=payload, headers=headers, timeout=60)
        elapsed = time.perf_counter() - started
        return elapsed, reply.status_code

    for _ in range(min(concurrency, count)):  # warm-up: connections, caches
        one(None)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    errors = sum(1 for r in results if r[1] != 200)
    return {
        "requests": count,
        "errors": errors,
        "throughput": count / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def fallback_scenario(base: str, fhir_port: int, count: int, concurrency: int) -> None:
    """No prefetch vs full prefetch against the local FHIR server, and how concurrent the queries were."""
    from cds_service.fhir_client import FhirFetcher, FhirSettings
    from cds_service.fhir_server import LocalFhirServer, seed_bundle
    from cds_service.hooks import evaluate_hook
    from cds_service.mappings import get_mappings

    fhir = LocalFhirServer(fhir_port)
    try:
        fhir_base = fhir.start()
    except RuntimeError as error:
        print(f"\nfallback scenario skipped: {error}")
        return
    try:
        seed_bundle(fhir_base, fixtures.patient_bundle(BASE_PATIENT))
        full = fixtures.hook_request(BASE_PATIENT, "order-select")
        full["fhirServer"] = fhir_base
        empty = json.loads(json.dumps(full))
        empty["prefetch"] = {}
        print("\nFHIR-server fallback (local FHIR server, same patient; server allowlists it):")
        print(f"{'request':>24} | {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
        for name, body in (("full prefetch", full), ("no prefetch (8 queries)", empty)):
            result = drive(f"{base}/cds-services/spine-mri-order-select", json.dumps(body).encode(), count,
                           concurrency)
            print(f"{name:>24} | {result['throughput']:>7.1f} {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f}"
                  + (f"  ({result['errors']} errors)" if result["errors"] else ""))
        fetcher = FhirFetcher(FhirSettings(allowed_servers=frozenset({fhir_base}), budget_seconds=5))
        sums, slowest, totals = [], [], []
        for _ in range(30):
            timings = evaluate_hook("spine-mri-order-select", json.loads(json.dumps(empty)), get_mappings(),
                                    fetcher=fetcher).timings_ms
            sums.append(timings["fhir_sum"])
            slowest.append(timings["fhir_slowest"])
            totals.append(timings["fhir"])
        print(f"queries, one hook at a time (median of 30): sum of the 8 queries {statistics.median(sums):.1f} ms, "
              f"slowest query {statistics.median(slowest):.1f} ms, all 8 concurrently {statistics.median(totals):.1f} ms")
    finally:
        fhir.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000, 10000])
    parser.add_argument("--requests", type=int, default=0, help="requests per scenario (default: by size)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-fallback", action="store_true", help="skip the FHIR-server fallback scenario")
    args = parser.parse_args()

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="cds-bench-")
    # Unauthenticated on purpose: the benchmark measures the clinical path, not JWT checks.
    fhir_port = free_port()
    env = dict(os.environ, CDS_BENCH_BARE_ENDPOINT="1", CDS_FEEDBACK_DB=f"{tmp}/bench.sqlite3",
               CDS_ALLOW_UNAUTHENTICATED="1", CDS_LOG_LEVEL="WARNING",
               CDS_FHIR_ALLOWED_SERVERS=f"http://127.0.0.1:{fhir_port}/fhir")
    server = subprocess.Popen([sys.executable, "-m", "cds_service", "serve", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", str(args.workers), "--threads", str(args.threads)],
                              env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(f"{base}/healthz", server):
            print("server did not start", file=sys.stderr)
            return 1
        print(f"server: {args.workers} workers x {args.threads} threads; client: {args.concurrency} concurrent; "
              f"cpu cores: {os.cpu_count()}")
        header = f"{'resources':>9} {'body KB':>8} | {'hook req/s':>10} {'p50 ms':>8} {'p99 ms':>8} | " \
                 f"{'bare req/s':>10} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>5}"
        print(header)
        print("-" * len(header))
        rows = []
        for size in args.sizes:
            payload = request_with_size(size)
            count = args.requests or max(20, min(400, 200_000 // size))
            hook = drive(f"{base}/cds-services/spine-mri-order-select", payload, count, args.concurrency)
            bare = drive(f"{base}/_bench/bare", payload, count, args.concurrency)
            ratio = hook["throughput"] / bare["throughput"]
            rows.append({"resources": size, "hook": hook, "bare": bare, "ratio": ratio})
            print(f"{size:>9} {len(payload) / 1024:>8.0f} | {hook['throughput']:>10.1f} {hook['p50_ms']:>8.1f} "
                  f"{hook['p99_ms']:>8.1f} | {bare['throughput']:>10.1f} {bare['p50_ms']:>8.1f} "
                  f"{bare['p99_ms']:>8.1f} | {ratio:>5.2f}"
                  + (f"  ({hook['errors'] + bare['errors']} errors)" if hook["errors"] or bare["errors"] else ""))
        if not args.no_fallback:
            fallback_scenario(base, fhir_port, 200, args.concurrency)
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            growth = (last["hook"]["p50_ms"] / first["hook"]["p50_ms"]) / (last["resources"] / first["resources"])
            print(f"\nhook p50 latency grows {growth:.2f}x as fast as the resource count "
                  f"({first['resources']} -> {last['resources']}); <= 1 means no worse than linear")
        return 0 if all(r["hook"]["errors"] == 0 and r["bare"]["errors"] == 0 for r in rows) else 1
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    raise SystemExit(main())
