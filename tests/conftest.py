from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
from apps import app_settings

from cds_service.clinical.mappings import get_mappings
from cds_service.web.app import create_app
from cds_service.web.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CAPTURES = ROOT / "fixtures" / "sandbox"
SCHEMAS = ROOT / "cds_service" / "hooks" / "schemas"


@pytest.fixture(scope="session")
def mappings():
    return get_mappings()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return app_settings(
        tmp_path,
        feedback_db=tmp_path / "feedback.sqlite3",
        max_body_bytes=2 * 1024 * 1024,
        bench_bare_endpoint=True,
        allow_unauthenticated=True,
    )


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture(scope="session")
def response_validator():
    schema = json.loads((SCHEMAS / "cds-hooks-response.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="session")
def captured_sandbox():
    return json.loads((SANDBOX_CAPTURES / "captured-requests.json").read_text())


@contextlib.contextmanager
def running_service(env: dict, workers: int = 2, threads: int = 8):
    """`cds-service serve` on a free loopback port with `env` added; yields {"base", "port", "process"}."""
    from cds_service.cli.processes import free_port, serve_command, wait_for_http

    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CDS_") or key == "CDS_LOCAL_FHIR_SERVER_BIN"
    }
    environment.update(CDS_LOG_LEVEL="WARNING", **env)
    process = subprocess.Popen(
        serve_command(port, workers, threads),
        env=environment,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(base + "/healthz", process, seconds=120):  # a loaded machine starts slowly
            process.kill()
            pytest.fail("the service did not start: " + process.stderr.read().decode()[-2000:])
        yield {"base": base, "port": port, "process": process}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """The real server (gunicorn, 2 workers) on a free loopback port, authentication off."""
    db = tmp_path_factory.mktemp("live") / "feedback.sqlite3"
    with running_service({"CDS_ALLOW_UNAUTHENTICATED": "1", "CDS_FEEDBACK_DB": str(db)}) as server:
        yield {**server, "db": db}


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the whole session; each test asks for its own database."""
    from postgres import LocalPostgres

    server = LocalPostgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The same tests on both backends: the embedded SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    import uuid

    return request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:12]}")
