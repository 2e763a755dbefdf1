"""Load and fault run: sustained hook traffic, a trickling FHIR server beside a healthy one, the
FHIR server killed mid-run, a slow FHIR server.

    .venv/bin/python bench/load.py                   # about a minute; --seconds 10 for a short run

Everything runs on loopback and stops by itself: every phase is bounded in time and in
requests. For each phase it prints what was sent, what came back (by status) and what was
lost (no answer, or an answer slower than the budget allows) -- which must be nothing -- and,
for the slow-server phase, the most threads and open sockets the service's processes held.
In the trickling phase half the hooks name a server that sends a byte every 0.2 s: the other
half, against the healthy server, must all be answered from it (200), not starved (412).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service.cli import fixtures  # noqa: E402
from cds_service.cli.local_fhir import LocalFhirServer, seed_bundle  # noqa: E402
from cds_service.cli.processes import free_port, serve_command, wait_for_http  # noqa: E402

BUDGET_SECONDS = 1.0
ANSWER_LIMIT_SECONDS = BUDGET_SECONDS + 2.0  # budget plus the service's own work and queueing
MAX_REQUESTS_PER_PHASE = 20_000


class SlowFhir(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        time.sleep(10)  # far beyond the budget
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.end_headers()
            self.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": []}')
        except OSError:
            pass  # the service gave up long ago


class TricklingFhir(BaseHTTPRequestHandler):
    """Headers a byte every 0.2 s: every socket read succeeds, the answer never ends."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for byte in b"X-Padding: " + b"a" * 300:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the service let go at its budget


def process_tree_usage(pid: int) -> tuple[int, int]:
    """(threads, open sockets) of a process and its children, from /proc."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    threads = sockets = 0
    for each in pids:
        try:
            threads += len(os.listdir(f"/proc/{each}/task"))
            for fd in os.listdir(f"/proc/{each}/fd"):
                try:
                    if os.readlink(f"/proc/{each}/fd/{fd}").startswith("socket:"):
                        sockets += 1
                except OSError:
                    pass
        except OSError:
            pass
    return threads, sockets


def run_phase(
    name: str,
    url: str,
    bodies: list[tuple[str, bytes]],
    seconds: float,
    concurrency: int,
    during=None,
    watch_pid: int | None = None,
) -> dict:
    """`bodies` are (label, body): statuses are also counted by label."""
    stop_at = time.monotonic() + seconds
    statuses: Counter = Counter()
    by_label: Counter = Counter()
    lost: list[str] = []
    sent = 0
    lock = threading.Lock()
    peak = [0, 0]

    def worker(index: int):
        nonlocal sent
        session = requests.Session()
        n = index
        while time.monotonic() < stop_at:
            with lock:
                if sent >= MAX_REQUESTS_PER_PHASE:
                    return
                sent += 1
            label, body = bodies[n % len(bodies)]
            n += concurrency
            started = time.monotonic()
            try:
                reply = session.post(
                    url, data=body, headers={"Content-Type": "application/json"}, timeout=ANSWER_LIMIT_SECONDS + 5
                )
                elapsed = time.monotonic() - started
                with lock:
                    statuses[reply.status_code] += 1
                    by_label[(label, reply.status_code)] += 1
                    if elapsed > ANSWER_LIMIT_SECONDS:
                        lost.append(f"answered in {elapsed:.1f} s")
                    if reply.status_code >= 500:
                        lost.append(f"HTTP {reply.status_code}")
            except requests.RequestException as error:
                with lock:
                    lost.append(type(error).__name__)

    def watcher():
        while time.monotonic() < stop_at:
            threads, sockets = process_tree_usage(watch_pid)
            peak[0], peak[1] = max(peak[0], threads), max(peak[1], sockets)
            time.sleep(0.2)

    extra = []
    if during:
        extra.append(threading.Thread(target=during, daemon=True))
    if watch_pid:
        extra.append(threading.Thread(target=watcher, daemon=True))
    for thread in extra:
        thread.start()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    received = sum(statuses.values())
    result = {
        "phase": name,
        "sent": sent,
        "received": received,
        "statuses": dict(statuses),
        "lost": len(lost),
        "lost_kinds": dict(Counter(lost)),
        "peak_threads": peak[0],
        "peak_sockets": peak[1],
        "by_label": dict(by_label),
    }
    print(
        f"{name:<34} sent {sent:>6}  received {received:>6}  by status {dict(sorted(statuses.items()))}  "
        f"lost {len(lost)}"
        + (f" {dict(Counter(lost))}" if lost else "")
        + (f"  peak threads {peak[0]}, sockets {peak[1]}" if watch_pid else ""),
        flush=True,
    )
    labels = sorted({label for label, _ in bodies})
    if len(labels) > 1:
        for label in labels:
            counts = {status: count for (each, status), count in sorted(by_label.items()) if each == label}
            print(f"{'':<4}{label:<30} by status {counts}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    fhir = LocalFhirServer(free_port())
    fhir_base = fhir.start()
    session = requests.Session()
    patients = [case["patient"] for case in fixtures.manifest()]
    for patient_id in patients:
        seed_bundle(fhir_base, fixtures.patient_bundle(patient_id), session)
    slow = ThreadingHTTPServer(("127.0.0.1", 0), SlowFhir)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    slow_base = f"http://127.0.0.1:{slow.server_address[1]}/fhir"
    trickling = ThreadingHTTPServer(("127.0.0.1", 0), TricklingFhir)
    trickling.daemon_threads = True
    threading.Thread(target=trickling.serve_forever, daemon=True).start()
    trickling_base = f"http://127.0.0.1:{trickling.server_address[1]}/fhir"

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="cds-load-")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDS_")}  # not the shell's settings
    env.update(
        CDS_ALLOW_UNAUTHENTICATED="1",
        CDS_FEEDBACK_DB=f"{tmp}/load.sqlite3",
        CDS_LOG_LEVEL="WARNING",
        CDS_FHIR_ALLOWED_SERVERS=f"{fhir_base},{slow_base},{trickling_base}",
        CDS_FHIR_BUDGET_SECONDS=str(BUDGET_SECONDS),
    )
    service = subprocess.Popen(
        serve_command(port, 2, 8),
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/cds-services/spine-mri-order-select"
    try:
        if not wait_for_http(f"http://127.0.0.1:{port}/healthz", service):
            print("the service did not start", file=sys.stderr)
            return 1

        def bodies(base: str, with_prefetch: bool, label: str = "") -> list[tuple[str, bytes]]:
            out = []
            for patient_id in patients:
                body = fixtures.hook_request(patient_id)
                body["fhirServer"] = base
                if not with_prefetch:
                    body["prefetch"] = {}
                out.append((label, json.dumps(body).encode()))
            return out

        def alternate(first: list, second: list) -> list:
            return [b for pair in zip(first, second, strict=False) for b in pair]

        mixed = alternate(bodies(fhir_base, True), bodies(fhir_base, False))
        print(
            f"service: 2 workers x 8 threads, FHIR budget {BUDGET_SECONDS} s; client: {args.concurrency} "
            f"concurrent; {args.seconds:.0f} s per phase; an answer counts as lost after "
            f"{ANSWER_LIMIT_SECONDS:.0f} s\n"
        )
        results = [run_phase("1. sustained (half without prefetch)", url, mixed, args.seconds, args.concurrency)]
        results.append(
            run_phase(
                "2. trickling + healthy FHIR server",
                url,
                alternate(
                    bodies(trickling_base, False, "against the trickling server"),
                    bodies(fhir_base, False, "against the healthy server"),
                ),
                args.seconds,
                args.concurrency,
            )
        )
        starved = sum(
            count
            for (label, status), count in results[-1]["by_label"].items()
            if label == "against the healthy server" and status != 200
        )

        def kill_fhir():
            time.sleep(args.seconds / 2)
            fhir.process.kill()

        results.append(
            run_phase(
                "3. FHIR server killed mid-run",
                url,
                bodies(fhir_base, False),
                args.seconds,
                args.concurrency,
                during=kill_fhir,
            )
        )
        results.append(
            run_phase(
                "4. FHIR server answering in 10 s",
                url,
                bodies(slow_base, False),
                args.seconds,
                args.concurrency,
                watch_pid=service.pid,
            )
        )
        lost = sum(r["lost"] for r in results)
        print(
            f"\nlost in all phases: {lost} (must be 0); hooks against the healthy server not answered 200 "
            f"while the other trickled: {starved} (must be 0)"
        )
        return 0 if lost == 0 and starved == 0 else 1
    finally:
        service.terminate()
        service.wait(timeout=15)
        slow.shutdown()
        trickling.shutdown()
        fhir.stop()


if __name__ == "__main__":
    raise SystemExit(main())
