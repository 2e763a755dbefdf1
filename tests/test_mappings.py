"""The mappings are data a wrong code silently breaks: every check must catch its own mistake."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cds_service.clinical.codesystems import icd10cm_exists, loinc_check_digit_valid, normalise_icd10, verhoeff_valid
from cds_service.clinical.validation import check_mappings

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


def test_shipped_mappings_are_valid():
    assert check_mappings(MAPPINGS) == []


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
        return check_mappings(target)

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


def test_catches_a_concept_no_rule_reads(broken):
    def change(document):
        document["concepts"].append({**document["concepts"][0], "id": "made_up_flag"})

    errors = broken("red_flags.yaml", change)
    assert errors == [
        "red_flags.yaml: made_up_flag: read by no rule (make a rule read it in "
        "cds_service/clinical/rules.py, or remove it)"
    ]


def test_catches_a_concept_the_rules_read_that_the_mappings_lack(broken):
    errors = broken("red_flags.yaml", lambda d: d["concepts"].pop([c["id"] for c in d["concepts"]].index("myelopathy")))
    assert errors == ["the rules read concept 'myelopathy', which the mappings do not define"]


def test_catches_one_code_filed_under_concepts_of_different_kinds(broken):
    """A cancer code under cauda equina would make every cancer patient's MRI an emergency."""

    def change(document):
        cauda = document["concepts"][[c["id"] for c in document["concepts"]].index("cauda_equina")]
        cauda["codes"].append(
            {
                "system": "icd10cm",
                "code": "C79.51",
                "display": "Secondary malignant neoplasm of bone",
                "confidence": "verified-authoritative",
                "source": "ICD10CM_FY2026",
            }
        )

    errors = broken("red_flags.yaml", change)
    assert (
        "red_flags.yaml: icd10cm C79.51 is filed under cauda_equina (neurological) and cancer (cancer): a code "
        "means one kind of finding" in errors
    )


def test_a_code_may_be_filed_under_another_kind_only_when_the_entry_says_so(broken):
    """The sprain codes are back pain and a recent injury: `also_under` says so; without it, refused."""

    def change(document):
        for concept in document["concepts"]:
            for entry in concept["codes"]:
                entry.pop("also_under", None)

    errors = broken("episode.yaml", change)
    assert any("S33.5XXA is filed under low_back_pain (episode) and recent_injury (fracture)" in e for e in errors)


def test_validate_mappings_command_exit_codes(tmp_path, broken, capsys):
    from cds_service.cli.main import main

    assert main(["validate-mappings", "--dir", str(MAPPINGS)]) == 0
    broken("episode.yaml", lambda d: _first_code(d, "icd10cm").update(code="M54.99"))
    assert main(["validate-mappings", "--dir", str(tmp_path / "mappings")]) == 1
    assert "M54.99" in capsys.readouterr().err


# ------------------------------------------------------------------ what the shipped codes mean (issue 8)

ICD10CM_URI = "http://hl7.org/fhir/sid/icd-10-cm"
WHO_ICD10_URI = "http://hl7.org/fhir/sid/icd-10"
SNOMED_URI = "http://snomed.info/sct"


def concepts_of(mappings, system, code) -> set[str]:
    return {match.concept.id for match in mappings.match_coding(system, code)}


@pytest.mark.parametrize(
    "code,expected",
    [
        ("S13.4XXA", True),
        ("S134XXA", True),
        ("S13.4XXD", True),
        ("S13.4XXS", False),
        ("S39.012A", True),
        ("S22.31XB", True),
        ("W19.XXXA", True),
        ("W19.XXXD", True),
        ("V43.52XA", True),
        ("W26.0XXA", False),
        ("S13.4", False),
    ],
)
def test_injury_codes_count_as_recent_at_initial_and_subsequent_encounters_not_sequela(mappings, code, expected):
    """Issue 16 B12: 7th character A (B, open fracture) or D is a recent injury; S (sequela) is history."""
    assert ("recent_injury" in concepts_of(mappings, ICD10CM_URI, code)) is expected


def test_who_icd10_injury_codes_have_no_seventh_character_and_match_on_the_category(mappings):
    assert "recent_injury" in concepts_of(mappings, WHO_ICD10_URI, "S13.4")
    assert "trauma" in concepts_of(mappings, WHO_ICD10_URI, "S32.0")


def test_fracture_sequela_is_not_recent_trauma(mappings):
    assert "trauma" in concepts_of(mappings, ICD10CM_URI, "S32.010A")
    assert not {"trauma", "vertebral_fracture"} & concepts_of(mappings, ICD10CM_URI, "S32.010S")


@pytest.mark.parametrize(
    "code,concept",
    [
        ("G83.24", "progressive_neuro_deficit"),
        ("G83.10", "progressive_neuro_deficit"),
        ("G83.33", "progressive_neuro_deficit"),
        ("M21.372", "progressive_neuro_deficit"),
        ("R26.89", "possible_motor_deficit"),
        ("R26.2", "possible_motor_deficit"),
        ("R29.898", "possible_motor_deficit"),
    ],
)
def test_motor_deficit_codes_however_coded(mappings, code, concept):
    assert concepts_of(mappings, ICD10CM_URI, code) & {"progressive_neuro_deficit", "possible_motor_deficit"} == {
        concept
    }


def test_generalised_weakness_is_not_a_motor_deficit(mappings):
    for code in ("M62.81", "R53.1"):
        assert not concepts_of(mappings, ICD10CM_URI, code) & {"progressive_neuro_deficit", "possible_motor_deficit"}


def test_snomed_limb_weakness_is_a_focal_motor_deficit(mappings):
    assert "progressive_neuro_deficit" in concepts_of(mappings, SNOMED_URI, "713514005")


@pytest.mark.parametrize(
    "code,concept,region",
    [
        ("2415007", "radiculopathy", "lumbar"),
        ("202757008", "radiculopathy", "cervical"),
        ("2169001", "radiculopathy", "thoracic"),
        ("23056005", "radiculopathy", "lumbar"),
        ("83561009", "stenosis", "cervical"),
        ("303081002", "stenosis", "lumbar"),
        ("76107001", "stenosis", "any"),
    ],
)
def test_snomed_only_reasons_count_like_their_icd_twins(mappings, code, concept, region):
    matches = [m for m in mappings.match_coding(SNOMED_URI, code) if m.concept.id == concept]
    assert [m.region for m in matches] == [region]


@pytest.mark.parametrize(
    "system,code,modality,region",
    [
        ("http://www.ama-assn.org/go/cpt", "72131", "ct", "lumbar"),
        ("http://www.ama-assn.org/go/cpt", "72127", "ct", "cervical"),
        ("http://www.ama-assn.org/go/cpt", "72110", "radiograph", "lumbar"),
        ("http://www.ama-assn.org/go/cpt", "72082", "radiograph", "multi"),
        ("http://loinc.org", "30620-9", "ct", "lumbar"),
    ],
)
def test_prior_imaging_codes(mappings, system, code, modality, region):
    order = mappings.order_for_coding(system, code)
    assert (order.modality, order.region) == (modality, region)


def test_catches_a_seventh_character_on_an_exact_code(broken):
    def change(document):
        _first_code(document, "icd10cm")["seventh"] = ["A"]

    errors = broken("red_flags.yaml", change)
    assert any("'seventh' applies only" in e for e in errors)


def test_catches_a_malformed_seventh_character(broken):
    def change(document):
        trauma = next(c for c in document["concepts"] if c["id"] == "trauma")
        trauma["codes"][0]["seventh"] = ["a1"]

    errors = broken("red_flags.yaml", change)
    assert any("seventh" in e for e in errors)


def test_a_procedure_carrying_an_imaging_code_is_prior_imaging_not_a_finding(mappings):
    from datetime import date

    from cds_service.clinical.facts import extract_facts
    from cds_service.clinical.model import MriOrder
    from cds_service.fhir.prefetch import from_prefetch

    procedure = {
        "resourceType": "Procedure",
        "id": "xr",
        "status": "completed",
        "performedDateTime": "2026-11-01",
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72100"}]},
    }
    prefetch = {
        key: {"resourceType": "Bundle", "type": "searchset", "entry": []}
        for key in (
            "conditions",
            "observations",
            "medications",
            "imagingStudies",
            "diagnosticReports",
            "serviceRequests",
        )
    }
    prefetch["patient"] = {"resourceType": "Patient", "id": "p"}
    prefetch["procedures"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": procedure}]}
    order = MriOrder("ServiceRequest/mri", {"resourceType": "ServiceRequest"}, "lumbar", "without", "MRI")
    facts = extract_facts(order, from_prefetch(prefetch), mappings, date(2026, 11, 22))
    assert [(s.modality, s.region, s.reference, s.date) for s in facts.prior_imaging] == [
        ("radiograph", "lumbar", "Procedure/xr", date(2026, 11, 1))
    ]
    assert not facts.findings and not facts.therapy_procedures


def test_a_record_resource_is_read_when_any_of_its_codings_is_known(mappings):
    """record_facts skips a resource before any date or status work unless one of its codings is known
    (a concept, a spine study or a measured threshold): the skip must not hide a second coding, a
    threshold-only LOINC code, nor a resource that is not an object (that one gets a note)."""
    from datetime import date

    from cds_service.clinical.facts import record_facts
    from cds_service.clinical.record import ClinicalData

    icd, loinc = "http://hl7.org/fhir/sid/icd-10-cm", "http://loinc.org"
    active = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
    pain = {
        "resourceType": "Condition",
        "id": "pain",
        "clinicalStatus": active,
        "onsetDateTime": "2026-10-01",
        "code": {
            "coding": [
                {"system": icd, "code": "I10"},
                {"system": "urn:local", "code": "x"},
                {"system": icd, "code": "M54.50", "display": "Low back pain"},
            ]
        },
    }
    unknown = {
        "resourceType": "Condition",
        "id": "bp",
        "clinicalStatus": active,
        "code": {"coding": [{"system": icd, "code": "I10"}, {"code": "M54.50"}]},
    }  # no system: not ICD-10
    fever = {
        "resourceType": "Observation",
        "id": "t",
        "status": "final",
        "effectiveDateTime": "2026-11-20",
        "code": {"coding": [{"system": loinc, "code": "8310-5"}]},
        "valueQuantity": {"value": 39.2, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"},
    }
    data = ClinicalData(resources={"conditions": [unknown, pain, "not a resource"], "observations": [fever]})
    facts = record_facts(data, mappings, date(2026, 11, 22))
    found = {(item.concept_id, item.reference) for item in facts.findings}
    assert ("fever", "Observation/t") in found
    assert any(reference == "Condition/pain" for _, reference in found)
    assert not any(reference == "Condition/bp" for _, reference in found)
    assert any("not a JSON object" in note for note in facts.skipped)


@pytest.mark.parametrize(
    "code,has,lacks",
    [
        ("F11.20", {"ivdu"}, set()),
        ("F11.21", set(), {"ivdu"}),  # in remission: not today's injection risk
        ("F11.11", set(), {"ivdu"}),
        ("F14.20", {"stimulant_use"}, {"ivdu"}),  # cocaine is mostly not injected: asked, not assumed
        ("F15.10", {"stimulant_use"}, {"ivdu"}),
        ("Z98.1", {"arthrodesis_status"}, {"prior_spine_surgery"}),  # any joint
        ("M96.1", {"prior_spine_surgery"}, set()),
        ("R20.0", {"numbness"}, set()),
        ("R20.1", {"numbness"}, set()),
        ("E11.65", {"diabetes"}, set()),
        ("E10.9", {"diabetes"}, set()),
        ("G06.2", {"epidural_abscess"}, {"spinal_infection"}),
        ("G06.1", {"epidural_abscess"}, {"spinal_infection"}),
        ("M46.26", {"spinal_infection"}, {"epidural_abscess"}),
        ("Z92.3", set(), {"cancer_history"}),  # irradiation is not cancer-specific
    ],
)
def test_codes_read_as_narrowly_as_they_mean(mappings, code, has, lacks):
    """A spine physician's review: codes read too broadly make overcalls (opioid use in remission as
    injection drug use, a fused ankle as spine surgery) that teach clinicians to ignore the card."""
    found = concepts_of(mappings, ICD10CM_URI, code)
    assert has <= found and not lacks & found, found


def test_bladder_and_saddle_codes_count_on_every_region(mappings):
    """Read on a neck or thoracic order too (cord compression): never set aside as 'a lumbar finding'."""
    assert [m.region for m in mappings.match_coding(ICD10CM_URI, "R33.9") if m.concept.id == "cauda_equina"] == ["any"]


@pytest.mark.parametrize(
    "value,unit,counted",
    [
        (39.2, "degC", True),
        (39.2, "°C", True),
        (102.0, "degF", True),
        (39.2, "cel", True),
        (37.0, "degC", False),
        (312.3, "K", None),  # not a unit the thresholds read: set aside, not guessed
    ],
)
def test_temperature_units_as_records_spell_them(mappings, value, unit, counted):
    facts = _facts_with_observation(mappings, "8310-5", value, unit)
    fever = [e for e in facts.findings if e.concept_id == "fever"]
    aside = [why for e, why in facts.set_aside if e.concept_id == "fever"]
    if counted is None:
        assert not fever and aside and "not recognised" in aside[0]
    else:
        assert bool(fever) is counted and not aside


def test_crp_in_mg_dl_of_either_case_is_converted(mappings):
    for unit in ("mg/dL", "mg/dl", "MG/DL"):
        facts = _facts_with_observation(mappings, "1988-5", 8.5, unit)
        assert [e.value for e in facts.findings if e.concept_id == "inflammatory_markers"] == ["CRP 8.5 mg/dL"]


@pytest.mark.parametrize("status,counted", [("final", True), ("preliminary", False), ("registered", False)])
def test_a_result_not_yet_verified_is_set_aside_with_why_never_dropped(mappings, status, counted):
    facts = _facts_with_observation(mappings, "8310-5", 39.0, "Cel", status=status)
    assert bool([e for e in facts.findings if e.concept_id == "fever"]) is counted
    aside = [(e.status, why) for e, why in facts.set_aside if e.concept_id == "fever"]
    assert aside == ([] if counted else [(status, f"{status} result, not yet verified")])


def test_a_cancelled_result_is_not_read_at_all(mappings):
    facts = _facts_with_observation(mappings, "8310-5", 39.0, "Cel", status="cancelled")
    assert not facts.findings and not facts.set_aside


def _facts_with_observation(mappings, loinc: str, value: float, unit: str, status: str = "final"):
    from datetime import date

    from cds_service.clinical.facts import extract_facts
    from cds_service.clinical.model import MriOrder
    from cds_service.fhir.prefetch import from_prefetch

    observation = {
        "resourceType": "Observation",
        "id": "obs",
        "status": status,
        "effectiveDateTime": "2026-11-21",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "valueQuantity": {"value": value, "unit": unit},
    }
    keys = ("conditions", "medications", "procedures", "imagingStudies", "diagnosticReports", "serviceRequests")
    prefetch = {key: {"resourceType": "Bundle", "type": "searchset", "entry": []} for key in keys}
    prefetch["patient"] = {"resourceType": "Patient", "id": "p"}
    prefetch["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": observation}]}
    order = MriOrder("ServiceRequest/mri", {"resourceType": "ServiceRequest"}, "lumbar", "without", "MRI")
    return extract_facts(order, from_prefetch(prefetch), mappings, date(2026, 11, 22))
