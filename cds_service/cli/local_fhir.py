"""A local FHIR R4 server for the demo and the tests, and seeding any FHIR server with fixtures.

The local server is sekmet-fhir (PyPI, pinned 0.1.1), installed by scripts/bootstrap.sh in
`.venv-fhir/` so its dependencies stay apart from ours. It is started with its activity
simulator off (it would rewrite data within seconds), on loopback, with a throw-away data
directory and a base URL matching its port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from .processes import die_with_parent, stop_process

ROOT = Path(__file__).resolve().parents[2]
FHIR_JSON = "application/fhir+json"


def find_server_command() -> Path | None:
    configured = os.environ.get("CDS_LOCAL_FHIR_SERVER_BIN")
    candidates = [Path(configured)] if configured else []
    candidates += [ROOT / ".venv-fhir" / "bin" / "sekmet"]
    found = shutil.which("sekmet")
    if found:
        candidates.append(Path(found))
    return next((path for path in candidates if path.exists()), None)


class LocalFhirServer:
    def __init__(self, port: int, data_dir: Path | None = None, log_path: Path | None = None):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/fhir"
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="cds-fhir-"))
        self.process: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path else self.data_dir / "server.log"

    def start(self, timeout: float = 60) -> str:
        command = find_server_command()
        if command is None:
            raise RuntimeError("the local FHIR server (sekmet-fhir) is not installed: run scripts/bootstrap.sh")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "settings.yaml"
        config.write_text(
            f"base_url: {self.base_url}\nhost: 127.0.0.1\nport: {self.port}\ndata_dir: {self.data_dir / 'data'}\n"
            "simulator:\n  enabled: false\nlog_inbound: false\n"
            f"own_private_key_path: {self.data_dir / 'keys' / 'sekmet_private.pem'}\n"
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [str(command), "serve", "--config", str(config)],
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the FHIR server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.base_url}/metadata", timeout=1).ok:
                    return self.base_url
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the FHIR server did not answer /metadata within {timeout:.0f} s")

    def stop(self) -> None:
        stop_process(self.process)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def seed_bundle(
    base_url: str, bundle: dict, session: requests.Session | None = None, headers: dict | None = None
) -> list[tuple[str, str]]:
    """POST a transaction Bundle (PUT entries keep their ids); returns (resource, status) per entry."""
    session = session or requests.Session()
    reply = session.post(
        base_url.rstrip("/"),
        json=bundle,
        timeout=60,
        headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **(headers or {})},
    )
    try:
        body = reply.json()
    except ValueError:
        raise RuntimeError(f"the FHIR server answered HTTP {reply.status_code} with a body that is not JSON") from None
    if reply.status_code >= 400 or body.get("resourceType") == "OperationOutcome":
        issues = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in body.get("issue", []))
        raise RuntimeError(f"the FHIR server refused the Bundle (HTTP {reply.status_code}): {issues}")
    results = []
    for sent, got in zip(bundle.get("entry", []), body.get("entry", []), strict=False):
        name = sent.get("request", {}).get("url") or sent.get("resource", {}).get("resourceType", "?")
        results.append((name, (got.get("response") or {}).get("status", "?")))
    return results
