"""What several commands check before they start (the mappings, a free port, a FHIR server), and
`CliError`, the one-line failure every command raises instead of a traceback."""
from __future__ import annotations

import errno
import socket
import time
from pathlib import Path


class CliError(Exception):
    """A problem the user can fix; `str()` is the one line to print."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def checked_mappings(directory: Path | None = None):
    """The mappings, or CliError naming the folder and what is wrong with it."""
    from ..clinical.mappings import MappingsError, default_mappings_dir, get_mappings
    from ..clinical.rules import knowledge_gaps

    try:
        mappings = get_mappings(directory)
    except MappingsError as error:
        raise CliError(f"cannot use the mappings: {error}") from None
    gaps = knowledge_gaps(mappings)
    if gaps:
        raise CliError(f"cannot use the mappings in {directory or default_mappings_dir()}: the rules read "
                       f"{', '.join(gaps[:5])}{' and more' if len(gaps) > 5 else ''}, which they do not define")
    return mappings


def ensure_port_free(host: str, port: int, how_to_change: str) -> None:
    """CliError when something already listens on host:port (say which and how to choose another)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CliError(f"port {port} on {host} is already in use (another cds-service, demo or FHIR "
                               f"server?): stop it, or choose another port with {how_to_change}") from None
            raise CliError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def check_fhir_base(url: str, session, wait_seconds: float = 0) -> str:
    """The base URL without a trailing slash, once GET {base}/metadata answers a CapabilityStatement."""
    import requests
    from urllib.parse import urlsplit

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
                    raise CliError(f"{base} does not look like a FHIR server (GET /metadata is not a "
                                   "CapabilityStatement)", 1)
                return base
        except requests.RequestException as error:
            problem = f"cannot be reached ({type(error).__name__})"
        if time.monotonic() >= deadline:
            waited = f" within {wait_seconds:g} s" if wait_seconds else ""
            raise CliError(f"the FHIR server at {base} {problem}{waited}: is it running, and is the base URL "
                           "right (it usually ends in /fhir)?", 1)
        time.sleep(2)
