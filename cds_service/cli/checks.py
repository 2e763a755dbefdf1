"""What several commands check before they start (the mappings, a free port, a FHIR server), and
`CliError`, the one-line failure every command raises instead of a traceback."""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..clinical.mappings import Mappings


class CliError(Exception):
    """A problem the user can fix; `str()` is the one line to print."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def checked_mappings(directory: Path | None = None) -> Mappings:
    """The mappings, or CliError naming the folder and its first problem. The same checks as
    `cds-service validate-mappings` (clinical.validation.check_mappings), which lists them all."""
    from ..clinical.mappings import default_mappings_dir, get_mappings
    from ..clinical.validation import check_mappings

    folder = Path(directory or default_mappings_dir())
    problems = check_mappings(folder)
    if problems:
        more = f" (and {len(problems) - 1} more: run cds-service validate-mappings)" if len(problems) > 1 else ""
        raise CliError(f"cannot use the mappings in {folder}: {problems[0]}{more}")
    return get_mappings(folder)


def ensure_port_free(host: str, port: int, how_to_change: str) -> None:
    """CliError when something already listens on host:port (say which and how to choose another)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {port} on {host} is already in use (another cds-service, demo or FHIR "
                    f"server?): stop it, or choose another port with {how_to_change}"
                ) from None
            raise CliError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def check_fhir_base(url: str, session, wait_seconds: float = 0) -> str:
    """The base URL without a trailing slash, once GET {base}/metadata answers a CapabilityStatement."""
    from urllib.parse import urlsplit

    import requests

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--fhir-base must be an http(s) URL such as http://127.0.0.1:8080/fhir, got {url!r}")
    base = url.rstrip("/")
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            reply = session.get(f"{base}/metadata", timeout=10, headers={"Accept": "application/fhir+json"})
            problem = None if reply.ok else f"GET /metadata answered HTTP {reply.status_code}"
            if problem is None:
                try:
                    kind = reply.json().get("resourceType")
                except (ValueError, AttributeError):
                    kind = None
                if kind != "CapabilityStatement":
                    raise CliError(
                        f"{base} does not look like a FHIR server (GET /metadata is not a CapabilityStatement)", 1
                    )
                return base
        except requests.RequestException as error:
            problem = f"cannot be reached ({type(error).__name__})"
        if time.monotonic() >= deadline:
            waited = f" within {wait_seconds:g} s" if wait_seconds else ""
            raise CliError(
                f"the FHIR server at {base} {problem}{waited}: is it running, and is the base URL "
                "right (it usually ends in /fhir)?",
                1,
            )
        time.sleep(2)
