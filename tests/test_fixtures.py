"""The fixtures are valid FHIR, complete, reproducible, and cover every region and verdict."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.cli import fixtures
from cds_service.cli.fixtures import shift_dates

FIXTURES = fixtures.FIXTURES_DIR
MANIFEST = fixtures.manifest()
VERDICTS = {"indicated-urgent", "indicated-routine", "radiographs-first", "low-value", "insufficient-information"}


def test_enough_patients_cover_every_region_and_verdict():
    assert len(MANIFEST) >= 25
    assert {case["region"] for case in MANIFEST} == {"lumbar", "cervical", "thoracic"}
    assert {case["expected_verdict"] for case in MANIFEST} == VERDICTS
    for region in ("lumbar", "cervical", "thoracic"):
        verdicts = {c["expected_verdict"] for c in MANIFEST if c["region"] == region}
        assert {"indicated-urgent", "low-value", "radiographs-first"} <= verdicts, region


@pytest.mark.parametrize("case", MANIFEST, ids=[c["patient"] for c in MANIFEST])
def test_patient_bundle_and_hooks_are_valid_fhir(case):
    patient_id = case["patient"]
    assert not patient_id.isdigit()
    bundle = json.loads((FIXTURES / "patients" / f"{patient_id}.json").read_text())
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction" and bundle["timestamp"].startswith(fixtures.ANCHOR.isoformat())
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])
    for hook in ("order-select", "order-sign"):
        request = json.loads((FIXTURES / "hooks" / f"{patient_id}.{hook}.json").read_text())
        assert request["hook"] == hook and request["context"]["patientId"] == patient_id
        for _key, value in request["prefetch"].items():
            if value.get("resourceType") == "Bundle":
                Bundle.model_validate(value)
        for entry in request["context"]["draftOrders"]["entry"]:
            if entry["resource"]["resourceType"] == "ServiceRequest":
                ServiceRequest.model_validate(entry["resource"])


def test_generator_reproduces_the_committed_files(tmp_path):
    subprocess.run(
        [sys.executable, str(FIXTURES / "generate.py"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    comparison = filecmp.dircmp(tmp_path, FIXTURES)
    for sub in ("patients", "hooks"):
        cmp = filecmp.dircmp(tmp_path / sub, FIXTURES / sub)
        assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, sub
        mismatch = filecmp.cmpfiles(tmp_path / sub, FIXTURES / sub, cmp.common_files, shallow=False)[1]
        assert not mismatch, mismatch
    assert filecmp.cmp(tmp_path / "manifest.json", FIXTURES / "manifest.json", shallow=False)
    assert comparison is not None


def test_date_shift_moves_dates_and_leaves_other_strings():
    value = {"a": "2026-11-08", "b": "2026-11-19T08:30:00Z", "c": "M54.50", "d": ["2026-01-31"], "e": "2026"}
    shifted = shift_dates(value, 10)
    assert shifted == {"a": "2026-11-18", "b": "2026-11-29T08:30:00Z", "c": "M54.50", "d": ["2026-02-10"], "e": "2026"}
