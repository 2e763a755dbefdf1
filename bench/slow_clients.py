"""Slow and idle clients against the service, straight or behind the shipped nginx proxy.

    .venv/bin/python bench/slow_clients.py                # about a minute: both targets, then wrk throughput

Everything runs on loopback and stops by itself. The attack holds, for a bounded time:
2,000 connections that send nothing, 24 that send a request line and then one header byte
every 2 s (slowloris), and 8 that send their headers and then one body byte every 2 s.
Meanwhile a client sends one signed order-select hook every 0.25 s and records how each one
went. gunicorn's gthread workers give a thread to each connection that has started a request,
so straight against `cds-service serve` the hooks stall; behind nginx
(deploy/nginx/cds.conf.template) they keep answering.

`LocalNginx` and `SlowClients` are also used by tests/test_slow_clients.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service.cli import fixtures  # noqa: E402
from cds_service.cli.processes import free_port, serve_command, stop_process, wait_for_http  # noqa: E402
from cds_service.web.auth import generate_key_pair, sign_token  # noqa: E402

DEPLOY = ROOT / "deploy" / "nginx"
SELECT = "/cds-services/spine-mri-order-select"
ISSUER = "urn:spine-imaging-cds:slow-client-bench"


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def shipped_limits() -> dict[str, int]:
    """worker_connections and worker_rlimit_nofile of the shipped main config (deploy/nginx/nginx.conf)."""
    text = (DEPLOY / "nginx.conf").read_text()
    return {
        name: int(re.search(rf"\b{name}\s+(\d+);", text).group(1))
        for name in ("worker_connections", "worker_rlimit_nofile")
    }


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (never above the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


class LocalNginx:
    """nginx on loopback with the shipped server block (deploy/nginx/cds.conf.template) in front of
    `upstream`, in a throw-away prefix directory; the main config mirrors deploy/nginx/nginx.conf."""

    def __init__(self, port: int, upstream: str, max_body_bytes: int = 32 * 1024 * 1024):
        self.port, self.upstream, self.max_body_bytes = port, upstream, max_body_bytes
        self.base = f"http://127.0.0.1:{port}"
        self.public_host = f"127.0.0.1:{port}"  # the only Host it answers, and the one it forwards
        self.prefix = Path(tempfile.mkdtemp(prefix="cds-nginx-"))
        self.prefix.chmod(0o755)  # nginx workers may run as another user (root starts them as nobody)
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed (scripts/system-packages.sh installs it)")
        server = Template((DEPLOY / "cds.conf.template").read_text()).safe_substitute(
            CDS_PROXY_LISTEN=f"127.0.0.1:{self.port}",
            CDS_UPSTREAM=self.upstream,
            CDS_MAX_BODY_BYTES=str(self.max_body_bytes),
            CDS_PUBLIC_HOST=self.public_host,
        )
        (self.prefix / "cds.conf").write_text(server)
        limits = shipped_limits()
        temp = "\n".join(
            f"    {kind}_temp_path {self.prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.prefix / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\nworker_rlimit_nofile {limits['worker_rlimit_nofile']};\n"
            f"pid {self.prefix / 'nginx.pid'};\nerror_log {self.prefix / 'error.log'} warn;\n"
            f"events {{\n    worker_connections {limits['worker_connections']};\n}}\n"
            f"http {{\n    access_log off;\n{temp}\n    include {self.prefix / 'cds.conf'};\n}}\n"
        )
        self.process = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60  # ends as soon as nginx listens; room for a loaded machine
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.base
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen within 60 s")

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.prefix, ignore_errors=True)


@dataclass
class SlowClients:
    """Idle, slowloris and slow-body connections to host:port, held until stop() (or `seconds`)."""

    port: int
    idle: int = 2000
    slow_headers: int = 24
    slow_bodies: int = 8
    drip_seconds: float = 2.0
    seconds: float = 30.0
    sockets: dict[str, list[socket.socket]] = field(default_factory=dict)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _connect(self, first: bytes = b"") -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            if first:
                sock.sendall(first)
            sock.setblocking(False)  # a drip never waits, and still_open() can peek
            return sock
        except OSError:
            return None

    def start(self) -> SlowClients:
        request_line = f"POST {SELECT} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n".encode()
        # The 2,000 idle ones first: opening them takes a while on a loaded machine, and the proxy's
        # header timeout (10 s) counts from each connection's start.
        idle = [self._connect() for _ in range(self.idle)]
        slow_bodies = [
            self._connect(request_line + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            for _ in range(self.slow_bodies)
        ]
        slow_headers = [self._connect(request_line) for _ in range(self.slow_headers)]
        self.sockets = {"slow_headers": slow_headers, "slow_bodies": slow_bodies, "idle": idle}
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()
        return self

    def _drip(self) -> None:
        stop_at = time.monotonic() + self.seconds
        while not self._stop.wait(self.drip_seconds) and time.monotonic() < stop_at:
            for kind, byte in (("slow_headers", b"X"), ("slow_bodies", b" ")):
                for sock in self.sockets[kind]:
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.send(byte)

    def still_open(self) -> dict[str, int]:
        """How many connections of each kind the server has not closed."""
        counts = {}
        for kind, socks in self.sockets.items():
            counts[kind] = 0
            for sock in socks:
                if sock is None:
                    continue
                try:
                    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        counts[kind] += 1  # the server answered (e.g. 408) but kept the connection
                except BlockingIOError:
                    counts[kind] += 1
                except OSError:
                    pass
        return counts

    def stop(self) -> None:
        self._stop.set()
        for socks in self.sockets.values():
            for sock in socks:
                if sock is not None:
                    sock.close()


def signed_hooks(
    base: str,
    key_pem: bytes,
    kid: str,
    seconds: float,
    every: float = 0.25,
    timeout: float = 10,
    after_each: Callable[[], object] | None = None,
) -> list[tuple[int | str, float]]:
    """(status or error name, seconds) of one signed order-select hook every `every` s for `seconds`;
    `after_each` is called as each one comes back."""
    body = json.dumps(fixtures.hook_request("lbp-osteoporosis")).encode()
    results = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        token = sign_token(ISSUER, key_pem, base + SELECT, kid)
        started = time.monotonic()
        try:
            # A new connection per hook, as a new EHR client would open.
            reply = requests.post(
                base + SELECT,
                data=body,
                timeout=timeout,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            outcome: int | str = reply.status_code
        except requests.RequestException as error:
            outcome = type(error).__name__
        results.append((outcome, time.monotonic() - started))
        if after_each is not None:
            after_each()
        time.sleep(max(0.0, every - (time.monotonic() - started)))
    return results


def client_identity(directory: Path) -> tuple[bytes, str, Path]:
    """(private key PEM, kid, trusted-issuers file) for the signed hooks."""
    kid = "slow-client-bench"
    pem, jwk = generate_key_pair(kid)
    trust = directory / "trusted-issuers.json"
    trust.write_text(json.dumps({ISSUER: {"jwks": {"keys": [jwk]}}}))
    return pem, kid, trust


def start_service(
    port: int,
    public_base: str | None,
    trust: Path,
    directory: Path,
    auth: bool = True,
    workers: int = 2,
    threads: int = 8,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(CDS_FEEDBACK_DB=str(directory / "f.sqlite3"), CDS_LOG_LEVEL="WARNING")
    env.update({"CDS_PUBLIC_BASE_URL": public_base} if public_base else {})
    env.update({"CDS_TRUSTED_ISSUERS": str(trust)} if auth else {"CDS_ALLOW_UNAUTHENTICATED": "1"})
    env.update(extra_env or {})
    process = subprocess.Popen(
        serve_command(port, workers, threads),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_for_http(f"http://127.0.0.1:{port}/healthz", process, seconds=120):  # loaded machines start slowly
        process.kill()
        raise RuntimeError("the service did not start")
    return process


def summary(results: list[tuple[int | str, float]]) -> str:
    answered = [seconds for outcome, seconds in results if outcome == 200]
    failed = len(results) - len(answered)
    slowest = max((seconds for _, seconds in results), default=0.0)
    return f"{len(results)} hooks sent, {len(answered)} answered 200, {failed} failed or other; slowest {slowest:.2f} s"


def wrk_throughput(url: str, body: bytes, seconds: int = 10, connections: int = 16) -> tuple[float, str]:
    """(requests/s, wrk's summary) for POSTing `body` to `url` (authentication off)."""
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "post.lua"
        body_file = Path(directory) / "body.json"
        body_file.write_bytes(body)
        script.write_text(
            f'local f = io.open("{body_file}", "rb")\nwrk.method = "POST"\nwrk.body = f:read("*a")\n'
            'f:close()\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests_per_second = float(rate.group(1)) if rate else 0.0
    return requests_per_second, (
        f"{requests_per_second:8.1f} req/s  p50 {p50.group(1) if p50 else '?':>8}  "
        f"p99 {p99.group(1) if p99 else '?':>8}  non-2xx {errors.group(1) if errors else 0}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8, help="how long hooks are sent while the attack holds")
    parser.add_argument("--wrk-seconds", type=int, default=8, help="0 skips the throughput comparison")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk runs per target (medians printed)")
    args = parser.parse_args()
    raise_open_files(8192)
    directory = Path(tempfile.mkdtemp(prefix="cds-slow-"))
    try:
        return run(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(args, directory: Path) -> int:
    pem, kid, trust = client_identity(directory)

    for target in ("straight to gunicorn", "behind nginx"):
        service_port, proxy_port = free_port(), free_port()
        proxied = target == "behind nginx"
        public = f"http://127.0.0.1:{proxy_port if proxied else service_port}"
        service = start_service(service_port, public, trust, directory)
        proxy = LocalNginx(proxy_port, f"127.0.0.1:{service_port}") if proxied else None
        try:
            if proxy:
                proxy.start()
            attack = SlowClients(proxy_port if proxied else service_port, seconds=args.seconds + 10).start()
            time.sleep(1)
            results = signed_hooks(public, pem, kid, args.seconds, timeout=5)
            held = attack.still_open()
            attack.stop()
            print(f"{target:<22} while holding {held}: {summary(results)}", flush=True)
        finally:
            if proxy:
                proxy.stop()
            stop_process(service, 15)

    if args.wrk_seconds and shutil.which("wrk"):
        print(
            f"\nthroughput, order-select with full prefetch, authentication off, wrk 2 threads x 16 connections, "
            f"{args.rounds} x {args.wrk_seconds} s alternating; service 2 workers x 8 threads:"
        )
        body = json.dumps(fixtures.hook_request("lbp-osteoporosis")).encode()
        service_port, proxy_port = free_port(), free_port()
        service = start_service(service_port, f"http://127.0.0.1:{proxy_port}", trust, directory, auth=False)
        proxy = LocalNginx(proxy_port, f"127.0.0.1:{service_port}")
        rates: dict[str, list[float]] = {"straight to gunicorn": [], "behind nginx": []}
        try:
            proxy.start()
            for _ in range(args.rounds):
                for name, base in (
                    ("straight to gunicorn", f"http://127.0.0.1:{service_port}"),
                    ("behind nginx", proxy.base),
                ):
                    rate, line = wrk_throughput(base + SELECT, body, args.wrk_seconds)
                    rates[name].append(rate)
                    print(f"  {name:<22} {line}", flush=True)
        finally:
            proxy.stop()
            stop_process(service, 15)
        medians = {name: sorted(values)[len(values) // 2] for name, values in rates.items()}
        print(
            "  medians: "
            + ", ".join(f"{name} {rate:.0f} req/s" for name, rate in medians.items())
            + f"; behind nginx / straight = {medians['behind nginx'] / max(medians['straight to gunicorn'], 1):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
