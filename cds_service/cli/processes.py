"""Small helpers for starting local servers: a free loopback port, the service's command line, and
waiting until one answers."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(port: int, workers: int | None = None, threads: int | None = None) -> list[str]:
    """`cds-service serve` on 127.0.0.1:`port`, as this interpreter runs it (the demo, the benchmarks
    and the tests start the service with it); workers and threads left to serve's defaults when None."""
    command = [sys.executable, "-m", "cds_service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def wait_for_http(url: str, process: subprocess.Popen | None = None, seconds: float = 30) -> bool:
    """True once `url` answers 2xx; False if `process` exits first or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            if requests.get(url, timeout=1).ok:
                return True
        except requests.RequestException:
            time.sleep(0.1)
    return False


def die_with_parent() -> None:
    """For Popen(preexec_fn=...): the child gets SIGTERM if its parent dies, even by SIGKILL (Linux).

    A demo stopped any way at all then leaves no FHIR server or service behind on its ports.
    """
    import ctypes
    import signal

    # not Linux (no prctl): the demo's own signal handlers still stop its children
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(process, seconds: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `seconds`."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
