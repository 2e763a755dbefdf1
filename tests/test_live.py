"""Opt-in: the fallback path against a real external FHIR server (e.g. the public HAPI FHIR R4).

    CDS_LIVE_FHIR_BASE=https://hapi.fhir.org/baseR4 .venv/bin/python -m pytest -m live

Seeds uniquely named copies of a few fixture patients, runs them through the fallback (no
prefetch) and deletes what it created. Skipped, with the reason, when the variable is unset.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import requests

from cds_service.cli import fixtures
from cds_service.cli.local_fhir import seed_bundle
from cds_service.fhir.client import FhirFetcher, FhirSettings
from cds_service.hooks.evaluation import evaluate_hook

LIVE_BASE = os.environ.get("CDS_LIVE_FHIR_BASE", "").rstrip("/")
PATIENTS = ["lbp-acute-simple", "lbp-cauda-equina", "lbp-osteoporosis", "neck-radic-persistent", "thx-myelopathy"]

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not LIVE_BASE, reason="set CDS_LIVE_FHIR_BASE to a FHIR R4 base URL to run the live suite"),
]


def renamed(value, old: str, new: str):
    return json.loads(json.dumps(value).replace(old, new))


@pytest.mark.parametrize("patient_id", PATIENTS)
def test_live_server_fallback(patient_id, mappings):
    run = f"cdsx{uuid.uuid4().hex[:8]}"
    new_id = f"{run}-{patient_id}"
    bundle = renamed(fixtures.patient_bundle(patient_id), patient_id, new_id)
    session = requests.Session()
    created = []
    try:
        for name, status in seed_bundle(LIVE_BASE, bundle, session):
            if status.startswith("20"):
                created.append(name)
        body = renamed(fixtures.hook_request(patient_id), patient_id, new_id)
        body["fhirServer"] = LIVE_BASE
        body["prefetch"] = {}
        fetcher = FhirFetcher(FhirSettings(allowed_servers=frozenset({LIVE_BASE}), budget_seconds=20))
        result = evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher)
        expected = next(c["expected_verdict"] for c in fixtures.manifest() if c["patient"] == patient_id)
        assert [e.verdict for e in result.evaluations] == [expected]
    finally:
        for name in reversed(created):  # children first, the Patient last
            session.delete(f"{LIVE_BASE}/{name}", timeout=30)
