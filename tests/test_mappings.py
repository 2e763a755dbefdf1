"""The mappings are data a wrong code silently breaks: every check must catch its own mistake."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cds_service.codesystems import icd10cm_exists, loinc_check_digit_valid, normalise_icd10, verhoeff_valid
from cds_service.mapping_validation import validate_mappings

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


def test_shipped_mappings_are_valid():
    assert validate_mappings(MAPPINGS) == []


@pytest.mark.parametrize("sctid", ["279039007", "192970008", "16846261000119106", "571891000119109"])
def test_verhoeff_accepts_real_snomed_ids_and_rejects_altered_ones(sctid):
    assert verhoeff_valid(sctid)
    altered = sctid[:-1] + str((int(sctid[-1]) + 1) % 10)
    assert not verhoeff_valid(altered)


@pytest.mark.parametrize("code", ["8310-5", "30679-5", "24967-2", "1988-5"])
def test_loinc_check_digit(code):
    assert loinc_check_digit_valid(code)
    body, check = code.split("-")
    assert not loinc_check_digit_valid(f"{body}-{(int(check) + 1) % 10}")


def test_icd10cm_lookup_uses_the_official_code_set():
    assert icd10cm_exists("G83.4") and icd10cm_exists("M5450") and icd10cm_exists("Z85")
    assert not icd10cm_exists("M54.99")
    assert normalise_icd10("m5416") == "M54.16"


@pytest.fixture
def broken(tmp_path):
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)

    def edit(filename: str, change):
        path = target / filename
        document = yaml.safe_load(path.read_text())
        change(document)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return validate_mappings(target)

    return edit


def _first_code(document, system):
    for concept in document["concepts"]:
        for entry in concept["codes"]:
            if entry["system"] == system and "code" in entry:
                return entry
    raise AssertionError(system)


def test_catches_a_snomed_typo(broken):
    def change(document):
        entry = _first_code(document, "snomed")
        entry["code"] = entry["code"][:-1] + str((int(entry["code"][-1]) + 3) % 10)
    errors = broken("red_flags.yaml", change)
    assert any("Verhoeff" in e for e in errors)


def test_catches_a_loinc_typo(broken):
    def change(document):
        threshold = document["concepts"][[c["id"] for c in document["concepts"]].index("fever")]["observations"][0]
        threshold["code"] = "8310-4"
    errors = broken("red_flags.yaml", change)
    assert any("LOINC 8310-4" in e for e in errors)


def test_catches_an_icd10cm_code_that_does_not_exist(broken):
    errors = broken("episode.yaml", lambda d: _first_code(d, "icd10cm").update(code="M54.99"))
    assert any("ICD-10-CM M54.99" in e for e in errors)


def test_catches_a_schema_violation(broken):
    errors = broken("red_flags.yaml", lambda d: d["concepts"][0].update(region="sacral"))
    assert any("region" in e or "sacral" in e for e in errors)


def test_catches_an_unknown_guideline(broken):
    errors = broken("red_flags.yaml", lambda d: d["concepts"][0]["guidelines"].append("ACR_MADE_UP"))
    assert any("ACR_MADE_UP" in e for e in errors)


def test_refuses_unverified_codes(broken):
    errors = broken("red_flags.yaml", lambda d: _first_code(d, "snomed").update(confidence="recalled-unverified"))
    assert any("recalled-unverified" in e for e in errors)


def test_catches_duplicate_concept_ids(broken):
    errors = broken("episode.yaml", lambda d: d["concepts"][0].update(id="cauda_equina"))
    assert any("also defined" in e for e in errors)


def test_validate_mappings_command_exit_codes(tmp_path, broken, capsys):
    from cds_service.cli import main

    assert main(["validate-mappings", "--dir", str(MAPPINGS)]) == 0
    broken("episode.yaml", lambda d: _first_code(d, "icd10cm").update(code="M54.99"))
    assert main(["validate-mappings", "--dir", str(tmp_path / "mappings")]) == 1
    assert "M54.99" in capsys.readouterr().err
