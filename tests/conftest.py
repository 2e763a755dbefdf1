from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.mappings import get_mappings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SCHEMAS = ROOT / "cds_service" / "schemas"


@pytest.fixture(scope="session")
def mappings():
    return get_mappings()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(feedback_db=tmp_path / "feedback.sqlite3", mappings_dir=None, max_body_bytes=2 * 1024 * 1024,
                    cors_origins="*", bench_bare_endpoint=True, log_level="INFO",
                    allow_unauthenticated=True)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture(scope="session")
def response_validator():
    schema = json.loads((SCHEMAS / "cds-hooks-response.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="session")
def captured_sandbox():
    path = SHARED / "reference" / "cds-hooks-sandbox" / "captured-requests.json"
    if not path.exists():
        pytest.skip(f"the shared reference is not at {path}")
    return json.loads(path.read_text())
