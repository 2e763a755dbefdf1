"""The decision module on hand-built facts: one test per rule and per red flag.

Facts are built directly (no FHIR, no mappings) so each test pins one rule: change the
rule and its test fails.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from cds_service.clinical.model import (
    FROM_ORDER,
    FROM_RECORD,
    Evidence,
    Facts,
    MedicationCourse,
    MriOrder,
    PriorImaging,
)
from cds_service.clinical.rules import decide, steroid_days

TODAY = date(2026, 11, 22)
LABELS = {
    "cauda_equina": "Cauda equina syndrome",
    "progressive_neuro_deficit": "Progressive motor deficit",
    "myelopathy": "Myelopathy",
    "spinal_cord_injury": "Spinal cord injury",
    "cancer": "Active cancer",
    "cancer_history": "History of cancer",
    "spinal_infection": "Spinal infection",
    "fever": "Fever",
    "bacteremia_sepsis": "Bacteremia or sepsis",
    "inflammatory_markers": "Raised inflammatory markers",
    "ivdu": "Injection drug use",
    "immunosuppression": "Immunosuppression",
    "trauma": "Recent spinal trauma",
    "prior_spine_surgery": "Prior spine surgery",
    "osteoporosis_fracture": "Osteoporosis",
    "long_term_steroids": "Long-term systemic steroids",
    "weight_loss": "Unexplained weight loss",
    "axial_spa": "Axial spondyloarthritis",
    "low_back_pain": "Low back pain",
    "neck_pain": "Neck pain",
    "thoracic_pain": "Thoracic back pain",
    "radiculopathy": "Radiculopathy",
    "stenosis": "Spinal stenosis",
    "vertebral_fracture": "Recent vertebral fracture",
    "recent_injury": "Recent neck or back injury",
    "possible_motor_deficit": "Weakness or gait disturbance",
    "dangerous_mechanism": "Dangerous injury mechanism",
    "paresthesia": "Paresthesia",
    "dish": "Diffuse idiopathic skeletal hyperostosis",
}
PAIN = {"lumbar": "low_back_pain", "cervical": "neck_pain", "thoracic": "thoracic_pain"}


def weeks_ago(weeks: float) -> date:
    return TODAY - timedelta(days=round(weeks * 7))


def finding(concept_id: str, when: date | None = None, origin: str = FROM_RECORD, region: str = "any") -> Evidence:
    return Evidence(
        concept_id, LABELS[concept_id], f"Condition/{concept_id}", origin, f"code for {concept_id}", when, region
    )


def make_facts(
    region="lumbar",
    contrast="without",
    pain_weeks: float | None = 2,
    age=40,
    sex="female",
    findings=(),
    medications=(),
    therapy=(),
    imaging=(),
    unread=None,
) -> Facts:
    order = MriOrder("ServiceRequest/mri", {"resourceType": "ServiceRequest", "id": "mri"}, region, contrast, "MRI")
    items = list(findings)
    if pain_weeks is not False:
        items.append(finding(PAIN[region], weeks_ago(pain_weeks) if pain_weeks is not None else None, region=region))
    return Facts(
        as_of=TODAY,
        order=order,
        age=age,
        sex=sex,
        findings=items,
        medications=list(medications),
        therapy_procedures=list(therapy),
        prior_imaging=list(imaging),
        unread_sources=dict(unread or {}),
        concept_labels=LABELS,
    )


def physical_therapy(weeks: float | None) -> Evidence:
    return Evidence(
        "physical_therapy",
        "Physical therapy",
        "Procedure/pt",
        FROM_RECORD,
        "CPT 97110",
        weeks_ago(weeks) if weeks is not None else None,
    )


# ------------------------------------------------------------------ urgent red flags


@pytest.mark.parametrize(
    "concept_id,region,variant",
    [
        ("cauda_equina", "lumbar", "LBP-V4"),
        ("progressive_neuro_deficit", "lumbar", "LBP-V4"),
        ("myelopathy", "cervical", "MYELO-V1"),
        ("myelopathy", "thoracic", "TH-MYELO"),
        ("spinal_cord_injury", "cervical", "TRAUMA-C"),
        ("spinal_infection", "lumbar", "LBP-V7"),
        ("spinal_infection", "cervical", "CN-V4"),
        ("spinal_infection", "thoracic", "TH-INFX"),
        ("bacteremia_sepsis", "lumbar", "LBP-V7"),
        ("cancer", "cervical", "CN-V5"),
        ("cancer_history", "lumbar", "LBP-V7"),
    ],
)
def test_each_urgent_red_flag_makes_mri_indicated_urgently(concept_id, region, variant):
    verdict = decide(make_facts(region=region, findings=[finding(concept_id, weeks_ago(1))]))
    assert verdict.code == "indicated-urgent"
    assert verdict.variant_id == variant
    assert verdict.pama_rating == "appropriate"
    assert any(e.concept_id == concept_id for e in verdict.red_flags_found)


def test_recent_fever_is_suspected_infection():
    verdict = decide(make_facts(findings=[finding("fever", TODAY - timedelta(days=3))]))
    assert verdict.code == "indicated-urgent"
    assert verdict.contrast_needed


def test_old_fever_does_not_count():
    verdict = decide(make_facts(findings=[finding("fever", TODAY - timedelta(days=200))]))
    assert verdict.code == "low-value"


def test_raised_markers_need_a_risk_factor_to_be_urgent():
    # Without a risk factor, raised markers are a weaker suspicion: radiographs (and ESR) first (ACP 2007).
    markers = finding("inflammatory_markers", TODAY - timedelta(days=2))
    assert decide(make_facts(findings=[markers])).code == "radiographs-first"
    with_risk = decide(make_facts(findings=[markers, finding("immunosuppression", weeks_ago(50))]))
    assert with_risk.code == "indicated-urgent"


def test_red_flag_stated_on_the_order_counts_and_says_so():
    verdict = decide(make_facts(findings=[finding("cauda_equina", None, origin=FROM_ORDER)]))
    assert verdict.code == "indicated-urgent"
    assert "stated on the order" in verdict.decisive_reason


def test_cauda_equina_code_for_lumbar_region_does_not_rate_a_cervical_order():
    verdict = decide(make_facts(region="cervical", findings=[finding("cauda_equina", weeks_ago(1), region="lumbar")]))
    assert verdict.code != "indicated-urgent"


def test_cancer_needs_contrast_so_no_contrast_change():
    verdict = decide(make_facts(contrast="with-and-without", findings=[finding("cancer", weeks_ago(100))]))
    assert verdict.contrast_needed


# ------------------------------------------------------------------ routine indications


def test_lumbar_prior_surgery_is_indicated_routine():
    verdict = decide(make_facts(findings=[finding("prior_spine_surgery", weeks_ago(100))]))
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-V5")


def test_cervical_prior_surgery_is_radiographs_first():
    verdict = decide(make_facts(region="cervical", findings=[finding("prior_spine_surgery", weeks_ago(100))]))
    assert (verdict.code, verdict.variant_id) == ("radiographs-first", "CN-V3")


def test_radiculopathy_after_six_weeks_of_therapy_is_indicated():
    facts = make_facts(pain_weeks=10, findings=[finding("radiculopathy", weeks_ago(10))], therapy=[physical_therapy(8)])
    verdict = decide(facts)
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-V3")


def test_radiculopathy_after_four_weeks_of_therapy_is_low_value():
    facts = make_facts(pain_weeks=10, findings=[finding("radiculopathy", weeks_ago(10))], therapy=[physical_therapy(4)])
    assert decide(facts).code == "low-value"


def test_undated_therapy_with_radiculopathy_cannot_be_rated():
    facts = make_facts(pain_weeks=None, findings=[finding("radiculopathy", None)], therapy=[physical_therapy(None)])
    verdict = decide(facts)
    assert verdict.code == "insufficient-information"
    assert verdict.pama_rating is None


def test_axial_pain_after_therapy_is_still_low_value():
    verdict = decide(make_facts(pain_weeks=12, therapy=[physical_therapy(9)]))
    assert verdict.code == "low-value"


def test_analgesic_prescription_counts_as_therapy():
    course = MedicationCourse(
        "analgesic_medication", "Analgesic", "MedicationRequest/nsaid", "ibuprofen", weeks_ago(7), 30
    )
    facts = make_facts(pain_weeks=8, findings=[finding("radiculopathy", weeks_ago(8))], medications=[course])
    assert decide(facts).code == "indicated-routine"


def test_cervical_radiculopathy_persistent_is_indicated_and_acute_is_deferred():
    persistent = make_facts(
        region="cervical", pain_weeks=False, findings=[finding("radiculopathy", weeks_ago(8), region="cervical")]
    )
    acute = make_facts(
        region="cervical", pain_weeks=False, findings=[finding("radiculopathy", weeks_ago(2), region="cervical")]
    )
    assert (decide(persistent).code, decide(persistent).variant_id) == ("indicated-routine", "CN-V2")
    assert decide(acute).code == "low-value"


def test_cervical_radiculopathy_without_dates_cannot_be_rated():
    facts = make_facts(
        region="cervical", pain_weeks=False, findings=[finding("radiculopathy", None, region="cervical")]
    )
    assert decide(facts).code == "insufficient-information"


def test_infection_risk_factor_alone_is_indicated_routine():
    verdict = decide(make_facts(findings=[finding("ivdu", weeks_ago(10))]))
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-V7")


# ------------------------------------------------------------------ radiographs first


@pytest.mark.parametrize("concept_id", ["osteoporosis_fracture", "long_term_steroids"])
def test_fracture_risk_means_radiographs_first(concept_id):
    verdict = decide(make_facts(findings=[finding(concept_id, weeks_ago(100))]))
    assert (verdict.code, verdict.variant_id) == ("radiographs-first", "LBP-V6")
    assert verdict.suggest_first_study == "radiograph"
    assert verdict.pama_rating == "not-appropriate"


@pytest.mark.parametrize(
    "age,sex,expected",
    [
        (66, "male", "radiographs-first"),
        (65, "male", "low-value"),
        (75, "female", "low-value"),
        (76, "female", "radiographs-first"),
    ],
)
def test_age_fracture_thresholds_follow_acp(age, sex, expected):
    # ACP 2007: men over 65, women over 75. A 2-week episode keeps the weaker age > 50 factor out.
    verdict = decide(make_facts(age=age, sex=sex, pain_weeks=2))
    assert verdict.code == expected


def test_weight_loss_means_radiographs_first():
    verdict = decide(make_facts(findings=[finding("weight_loss", weeks_ago(3))]))
    assert (verdict.code, verdict.variant_id) == ("radiographs-first", "LBP-ACP-DEFER")


def test_axial_spondyloarthritis_means_radiographs_first():
    assert decide(make_facts(findings=[finding("axial_spa", weeks_ago(50))])).code == "radiographs-first"


def test_age_over_50_waits_a_month_then_radiographs():
    assert decide(make_facts(age=55, sex="male", pain_weeks=2)).code == "low-value"
    assert decide(make_facts(age=55, sex="male", pain_weeks=7)).code == "radiographs-first"


def test_recent_trauma_means_ct_or_radiographs_first():
    verdict = decide(make_facts(findings=[finding("trauma", TODAY - timedelta(days=5))]))
    assert verdict.code == "radiographs-first"
    assert verdict.suggest_first_study == "ct"


def test_old_trauma_is_not_a_red_flag():
    assert decide(make_facts(findings=[finding("trauma", weeks_ago(100))])).code == "low-value"


def test_radiographs_already_done_make_mri_indicated():
    xray = PriorImaging("radiograph", "lumbar", "DiagnosticReport/xr", "XR lumbar spine", weeks_ago(1))
    verdict = decide(make_facts(findings=[finding("osteoporosis_fracture", weeks_ago(100))], imaging=[xray]))
    assert verdict.code == "indicated-routine"


def test_radiographs_of_another_region_do_not_count():
    xray = PriorImaging("radiograph", "cervical", "DiagnosticReport/xr", "XR cervical spine", weeks_ago(1))
    verdict = decide(make_facts(findings=[finding("osteoporosis_fracture", weeks_ago(100))], imaging=[xray]))
    assert verdict.code == "radiographs-first"


def test_chronic_neck_pain_radiographs_first_then_mri():
    assert decide(make_facts(region="cervical", pain_weeks=16)).variant_id == "CN-V7"
    xray = PriorImaging("radiograph", "cervical", "DiagnosticReport/xr", "XR cervical spine", weeks_ago(4))
    assert decide(make_facts(region="cervical", pain_weeks=16, imaging=[xray])).code == "indicated-routine"


# ------------------------------------------------------------------ low value and missing data


def test_acute_pain_without_red_flags_is_low_value_v1():
    verdict = decide(make_facts(pain_weeks=2))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V1")
    assert verdict.suggest_cancel
    assert "Cauda equina syndrome" in verdict.red_flags_absent


def test_chronic_pain_without_therapy_is_low_value_v2():
    verdict = decide(make_facts(pain_weeks=10))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V2")


def test_undated_pain_without_therapy_is_low_value_either_way():
    assert decide(make_facts(pain_weeks=None)).code == "low-value"


def test_no_indication_documented_cannot_be_rated():
    verdict = decide(make_facts(pain_weeks=False))
    assert verdict.code == "insufficient-information"
    assert verdict.pama_rating is None
    # the data were read: what is lacking is not documented, not unreadable
    assert verdict.not_documented and verdict.missing == []


def test_an_indication_of_another_region_is_named_not_called_missing():
    lumbar_reason = finding("radiculopathy", None, origin=FROM_ORDER, region="lumbar")
    verdict = decide(make_facts(region="cervical", pain_weeks=False, findings=[lumbar_reason]))
    assert verdict.code == "insufficient-information"
    assert "another region" in verdict.decisive_reason and "order's reason" in verdict.decisive_reason
    assert any("lumbar spine" in line for line in verdict.would_change)


def test_missing_source_blocks_low_value():
    verdict = decide(make_facts(unread={"medications": "not in the prefetch"}))
    assert verdict.code == "insufficient-information"
    assert any("MedicationRequests" in item for item in verdict.missing)
    assert verdict.red_flags_absent == []  # absence is not asserted on partial data


def test_missing_source_blocks_radiographs_first_too():
    verdict = decide(
        make_facts(
            findings=[finding("osteoporosis_fracture", weeks_ago(50))], unread={"observations": "not in the prefetch"}
        )
    )
    assert verdict.code == "insufficient-information"


def test_found_red_flag_rates_even_with_missing_sources():
    verdict = decide(
        make_facts(
            findings=[finding("cauda_equina", weeks_ago(1))],
            unread={"medications": "x", "observations": "y", "procedures": "z"},
        )
    )
    assert verdict.code == "indicated-urgent"


def test_thoracic_nonspecific_is_extrapolated_and_rated_no_criteria():
    verdict = decide(make_facts(region="thoracic", pain_weeks=1))
    assert verdict.code == "low-value"
    assert verdict.extrapolated
    assert verdict.pama_rating == "no-criteria-apply"


def test_thoracic_infection_rates_appropriate():
    verdict = decide(make_facts(region="thoracic", findings=[finding("spinal_infection", weeks_ago(1))]))
    assert verdict.pama_rating == "appropriate"


# ------------------------------------------------------------------ steroid duration


def test_steroid_days_counts_supply_within_the_last_year_once():
    long_course = MedicationCourse(
        "systemic_corticosteroid", "Steroid", "MedicationRequest/a", "prednisone", TODAY - timedelta(days=150), 120
    )
    overlapping = MedicationCourse(
        "systemic_corticosteroid", "Steroid", "MedicationRequest/b", "prednisone", TODAY - timedelta(days=100), 30
    )
    assert steroid_days([long_course], TODAY) == 120
    assert steroid_days([long_course, overlapping], TODAY) == 120
    burst = MedicationCourse(
        "systemic_corticosteroid", "Steroid", "MedicationRequest/c", "prednisone", TODAY - timedelta(days=20), 5
    )
    assert steroid_days([burst], TODAY) == 5


def test_long_steroid_prescriptions_are_fracture_risk_and_bursts_are_not():
    long_course = MedicationCourse(
        "systemic_corticosteroid", "Steroid", "MedicationRequest/a", "prednisone", TODAY - timedelta(days=150), 120
    )
    burst = MedicationCourse(
        "systemic_corticosteroid", "Steroid", "MedicationRequest/c", "prednisone", TODAY - timedelta(days=20), 5
    )
    assert decide(make_facts(medications=[long_course])).code == "radiographs-first"
    assert decide(make_facts(medications=[burst])).code == "low-value"


# ------------------------------------------------------------------ the first study is already done (issue 8.1)


def study(modality: str, region: str, days_ago: int, reference: str = "DiagnosticReport/prior") -> PriorImaging:
    return PriorImaging(modality, region, reference, f"{modality} {region} spine", TODAY - timedelta(days=days_ago))


def test_ct_already_done_also_makes_mri_the_next_step():
    verdict = decide(
        make_facts(findings=[finding("osteoporosis_fracture", weeks_ago(100))], imaging=[study("ct", "lumbar", 5)])
    )
    assert verdict.code == "indicated-routine"
    assert "MRI is the next study" in verdict.decisive_reason


def test_radiographs_before_this_episode_do_not_count():
    verdict = decide(
        make_facts(
            pain_weeks=2,
            findings=[finding("osteoporosis_fracture", weeks_ago(100))],
            imaging=[study("radiograph", "lumbar", 60)],
        )
    )
    assert verdict.code == "radiographs-first"


def test_radiographs_older_than_twelve_months_never_count():
    verdict = decide(
        make_facts(
            pain_weeks=80,
            findings=[finding("osteoporosis_fracture", weeks_ago(100))],
            imaging=[study("radiograph", "lumbar", 400)],
        )
    )
    assert verdict.code == "radiographs-first"


def test_raised_markers_after_negative_radiographs_make_mri_indicated():
    # ACP 2007: MRI when radiographs are negative and the suspicion (a raised ESR/CRP) remains.
    markers = finding("inflammatory_markers", TODAY - timedelta(days=3))
    verdict = decide(make_facts(findings=[markers], imaging=[study("radiograph", "lumbar", 4)]))
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-ACP-DEFER")


def test_unread_prior_imaging_is_named_on_radiographs_first():
    verdict = decide(
        make_facts(findings=[finding("osteoporosis_fracture", weeks_ago(100))], unread={"diagnosticReports": "timeout"})
    )
    assert verdict.code == "radiographs-first"
    assert any("Prior imaging could not be read" in reason for reason in verdict.reasons)


def test_card_lists_prior_imaging_of_the_region_in_words():
    verdict = decide(make_facts(imaging=[study("radiograph", "lumbar", 21), study("mri", "cervical", 30)]))
    assert len(verdict.prior_imaging) == 1
    assert verdict.prior_imaging[0].startswith("lumbar radiographs 3 weeks ago")


# ------------------------------------------------------------------ new vertebral compression fracture (ACR VCF)


def test_new_fragility_vertebral_fracture_makes_mri_indicated():
    fracture = finding("vertebral_fracture", weeks_ago(1), region="lumbar")
    verdict = decide(
        make_facts(age=80, sex="female", findings=[fracture, finding("osteoporosis_fracture", weeks_ago(1))])
    )
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "VCF-V1")
    assert verdict.pama_rating == "appropriate"


def test_vertebral_fracture_in_a_young_patient_without_fragility_is_trauma_ct_first():
    fracture = finding("vertebral_fracture", weeks_ago(1), region="lumbar")
    verdict = decide(make_facts(age=35, sex="male", findings=[fracture, finding("trauma", weeks_ago(1))]))
    assert (verdict.code, verdict.suggest_first_study) == ("radiographs-first", "ct")


def test_old_vertebral_fracture_is_not_new():
    fracture = finding("vertebral_fracture", weeks_ago(30), region="lumbar")
    verdict = decide(make_facts(age=80, sex="female", findings=[fracture]))
    assert verdict.variant_id != "VCF-V1"


# ---------------------------------------------------- trauma (ACR Suspected Spine Trauma, Canadian C-spine rule)


def injury(days_ago=2, region="cervical") -> Evidence:
    return finding("recent_injury", TODAY - timedelta(days=days_ago), region=region)


def test_neck_injury_at_65_or_older_means_ct_first():
    verdict = decide(make_facts(region="cervical", age=70, sex="female", findings=[injury()]))
    assert (verdict.code, verdict.suggest_first_study, verdict.variant_id) == ("radiographs-first", "ct", "TRAUMA-C")


@pytest.mark.parametrize("factor", ["dangerous_mechanism", "paresthesia", "axial_spa", "dish"])
def test_each_high_risk_factor_after_neck_injury_means_ct_first(factor):
    verdict = decide(make_facts(region="cervical", age=40, findings=[injury(), finding(factor, weeks_ago(1))]))
    assert (verdict.code, verdict.suggest_first_study) == ("radiographs-first", "ct")


def test_low_risk_neck_injury_needs_no_imaging():
    verdict = decide(make_facts(region="cervical", age=40, pain_weeks=0.3, findings=[injury()]))
    assert (verdict.code, verdict.variant_id) == ("low-value", "TRAUMA-C-LOW")


def test_negative_ct_after_injury_makes_mri_the_next_study():
    # Suspected ligamentous injury or an ankylosed spine after a negative CT: MRI (ACR Suspected Spine Trauma).
    for extra in ([], [finding("axial_spa", weeks_ago(200))]):
        verdict = decide(
            make_facts(region="cervical", age=40, findings=[injury(3), *extra], imaging=[study("ct", "cervical", 2)])
        )
        assert verdict.code == "indicated-routine", extra


def test_ct_before_the_injury_does_not_count():
    verdict = decide(make_facts(region="cervical", age=70, findings=[injury(3)], imaging=[study("ct", "cervical", 20)]))
    assert verdict.code == "radiographs-first"


def test_thoracolumbar_injury_in_an_older_patient_means_radiographs_first():
    verdict = decide(make_facts(age=68, sex="female", findings=[injury(5, "lumbar")]))
    assert (verdict.code, verdict.variant_id) == ("radiographs-first", "LBP-V6")


def test_thoracolumbar_sprain_in_a_young_patient_is_back_pain():
    verdict = decide(make_facts(age=30, findings=[injury(5, "lumbar")]))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V1")


def test_injury_older_than_90_days_is_not_recent_and_says_so():
    verdict = decide(make_facts(region="cervical", age=70, findings=[injury(200)]))
    assert verdict.code != "radiographs-first"
    assert any(item.concept_id == "recent_injury" for item, _ in verdict.red_flags_not_relevant)


# ------------------------------------------------------------------ motor deficits, however coded (issue 8.3)


def test_focal_deficit_recorded_long_ago_is_routine_and_asks_to_verify():
    verdict = decide(make_facts(findings=[finding("progressive_neuro_deficit", weeks_ago(40))]))
    assert verdict.code == "indicated-routine"
    assert "verify it is new or progressing" in verdict.decisive_reason


def test_undated_focal_deficit_is_routine_and_asks_to_verify():
    verdict = decide(make_facts(findings=[finding("progressive_neuro_deficit", None)]))
    assert verdict.code == "indicated-routine"
    assert "undated" in verdict.decisive_reason


def test_focal_deficit_on_the_order_is_urgent():
    verdict = decide(make_facts(findings=[finding("progressive_neuro_deficit", None, origin=FROM_ORDER)]))
    assert verdict.code == "indicated-urgent"


def test_non_specific_weakness_in_this_episode_is_routine_not_low_value():
    weakness = finding("possible_motor_deficit", weeks_ago(1))
    verdict = decide(make_facts(findings=[weakness]))
    assert verdict.code == "indicated-routine"
    assert any("new or progressing" in reason for reason in verdict.reasons)


def test_non_specific_weakness_from_long_ago_does_not_count():
    weakness = finding("possible_motor_deficit", weeks_ago(30))
    verdict = decide(make_facts(findings=[weakness]))
    assert verdict.code == "low-value"
    assert [item.concept_id for item, _ in verdict.red_flags_not_relevant] == ["possible_motor_deficit"]


# ------------------------------------------------------------------ repeat MRI


def test_recent_mri_of_the_same_region_makes_a_repeat_low_value():
    facts = make_facts(
        pain_weeks=20,
        findings=[finding("radiculopathy", weeks_ago(20))],
        therapy=[physical_therapy(18)],
        imaging=[study("mri", "lumbar", 91)],
    )
    verdict = decide(facts)
    assert (verdict.code, verdict.variant_id) == ("low-value", "REPEAT-MRI")
    assert "lumbar MRI 3 months ago" in verdict.decisive_reason


def test_finding_recorded_after_the_mri_is_rated_as_new():
    facts = make_facts(
        pain_weeks=20,
        findings=[finding("radiculopathy", weeks_ago(9))],
        therapy=[physical_therapy(8)],
        imaging=[study("mri", "lumbar", 91)],
    )
    assert decide(facts).code == "indicated-routine"


def test_urgent_red_flag_keeps_urgent_despite_a_recent_mri():
    verdict = decide(make_facts(findings=[finding("cauda_equina", weeks_ago(1))], imaging=[study("mri", "lumbar", 30)]))
    assert verdict.code == "indicated-urgent"
    assert any("Prior MRI of this region" in reason for reason in verdict.reasons)


def test_mri_of_another_region_is_not_a_repeat():
    facts = make_facts(
        pain_weeks=20,
        findings=[finding("radiculopathy", weeks_ago(20))],
        therapy=[physical_therapy(18)],
        imaging=[study("mri", "cervical", 91)],
    )
    assert decide(facts).code == "indicated-routine"


# ------------------------------------------------------------------ the card never states what the record contradicts


def test_red_flag_of_another_region_is_found_not_relevant_never_absent():
    verdict = decide(make_facts(region="cervical", findings=[finding("cauda_equina", weeks_ago(1), region="lumbar")]))
    assert "Cauda equina syndrome" not in verdict.red_flags_absent
    assert [(item.concept_id, "lumbar" in why) for item, why in verdict.red_flags_not_relevant] == [
        ("cauda_equina", True)
    ]


def test_old_fever_is_found_not_relevant_never_absent():
    verdict = decide(make_facts(findings=[finding("fever", TODAY - timedelta(days=200))]))
    assert "Fever" not in verdict.red_flags_absent
    assert any(item.concept_id == "fever" for item, _ in verdict.red_flags_not_relevant)


@pytest.mark.parametrize("weeks,words", [(1, "1 week"), (1 / 7, "1 day"), (3, "3 weeks"), (0.3, "2 days")])
def test_durations_are_singular_or_plural(weeks, words):
    from cds_service.clinical.rules import format_weeks

    assert format_weeks(weeks) == words


def test_card_detail_says_one_week_and_found_not_relevant():
    from cds_service.clinical.mappings import get_mappings
    from cds_service.hooks.cards import build_card

    facts = make_facts(
        region="cervical",
        pain_weeks=False,
        findings=[
            finding("neck_pain", weeks_ago(1), region="cervical"),
            finding("cauda_equina", weeks_ago(1), region="lumbar"),
        ],
    )
    verdict = decide(facts)
    card = build_card(facts.order, verdict, get_mappings(), "urn:uuid:test").card
    detail = card["detail"]
    assert "1 week since" in detail and "1 weeks" not in detail
    assert "**Found, not relevant to this study**" in detail
    not_found = next(line for line in detail.splitlines() if line.startswith("**Checked and not found"))
    assert "Cauda equina" not in not_found


def test_resolved_or_entered_in_error_red_flags_are_set_aside_never_absent():
    facts = make_facts()
    facts.set_aside = [(finding("cauda_equina", weeks_ago(100)), "clinical status resolved")]
    verdict = decide(facts)
    assert verdict.code == "low-value"
    assert "Cauda equina syndrome" not in verdict.red_flags_absent
    assert [why for _, why in verdict.red_flags_not_relevant] == ["clinical status resolved"]


def test_the_rules_name_only_knowledge_the_mappings_define(mappings):
    import inspect
    import re

    from cds_service.clinical import rules

    assert rules.knowledge_gaps(mappings) == []
    # every variant and guideline the rules' source names literally is in the lists checked at start-up
    source = inspect.getsource(rules)
    literal_variants = set(re.findall(r'variant(?:_id=|, guidelines = | = )"([A-Z0-9-]+)"', source))
    assert literal_variants <= set(rules.NAMED_VARIANTS)
    cited = {
        g
        for group in re.findall(r"(?:guideline_ids=|guidelines = |, )\[([^\]]*)\]", source)
        for g in re.findall(r'"([A-Z][A-Z0-9_]+)"', group)
    }
    assert cited <= set(rules.CITED_GUIDELINES)


def test_a_mappings_folder_missing_a_concept_the_rules_read_is_a_gap(tmp_path):
    import shutil

    import yaml

    from cds_service.clinical.mappings import load_mappings
    from cds_service.clinical.rules import knowledge_gaps

    target = tmp_path / "mappings"
    shutil.copytree(Path(__file__).resolve().parent.parent / "mappings", target)
    red_flags = yaml.safe_load((target / "red_flags.yaml").read_text())
    red_flags["concepts"] = [c for c in red_flags["concepts"] if c["id"] != "cauda_equina"]
    (target / "red_flags.yaml").write_text(yaml.safe_dump(red_flags, sort_keys=False))
    assert "concept 'cauda_equina'" in knowledge_gaps(load_mappings(target))


def test_a_cervical_urgent_verdict_cites_no_low_back_pain_guideline():
    verdict = decide(make_facts(region="cervical", findings=[finding("myelopathy", weeks_ago(1), region="cervical")]))
    assert verdict.code == "indicated-urgent"
    assert not {"ACP_APS_2007", "CW_NASS"} & set(verdict.guideline_ids)
    lumbar = decide(make_facts(findings=[finding("cauda_equina", weeks_ago(1))]))
    assert "ACP_APS_2007" in lumbar.guideline_ids
