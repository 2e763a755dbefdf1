"""The decision module on hand-built facts: one test per rule and per red flag.

Facts are built directly (no FHIR) so each test pins one rule: change the rule and its test
fails. ACR ratings come from the shipped mappings (the PAMA rating follows them).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from cds_service.clinical.mappings import get_mappings
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
    "progressive_neuro_deficit": "Focal motor deficit",
    "possible_motor_deficit": "Weakness or gait disturbance",
    "myelopathy": "Myelopathy",
    "spinal_cord_injury": "Spinal cord injury",
    "cancer": "Active cancer",
    "cancer_history": "History of cancer",
    "spinal_infection": "Spinal infection",
    "fever": "Fever",
    "bacteremia_sepsis": "Bacteremia or sepsis",
    "inflammatory_markers": "Raised inflammatory markers",
    "ivdu": "Injection drug use or opioid use disorder",
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
    "dangerous_mechanism": "Dangerous injury mechanism",
    "paresthesia": "Paresthesia",
    "dish": "Diffuse idiopathic skeletal hyperostosis",
    "pregnancy": "Pregnancy",
    "demyelinating_disease": "Multiple sclerosis or NMOSD",
    "neuraxial_procedure": "Epidural or spinal injection",
    "anticoagulant_medication": "Anticoagulant",
    "follow_up_encounter": "Follow-up after completed treatment",
    "spondylolysis": "Spondylolysis",
    "epidural_abscess": "Spinal epidural abscess",
    "diabetes": "Diabetes mellitus",
    "stimulant_use": "Stimulant use disorder",
    "arthrodesis_status": "Arthrodesis status (any joint)",
    "numbness": "Numbness (site not coded)",
}
PAIN = {"lumbar": "low_back_pain", "cervical": "neck_pain", "thoracic": "thoracic_pain"}
ACR_RATINGS = get_mappings().acr_ratings


def weeks_ago(weeks: float) -> date:
    return TODAY - timedelta(days=round(weeks * 7))


def finding(
    concept_id: str,
    when: date | None = None,
    origin: str = FROM_RECORD,
    region: str = "any",
    **more,
) -> Evidence:
    return Evidence(
        concept_id,
        LABELS[concept_id],
        f"Condition/{concept_id}",
        origin,
        f"code for {concept_id}",
        when,
        region,
        **more,
    )


def make_facts(
    region="lumbar",
    contrast="without",
    pain_weeks: float | bool | None = 2,
    age=40,
    sex="female",
    findings=(),
    medications=(),
    therapy=(),
    imaging=(),
    unread=None,
    priority="routine",
) -> Facts:
    order = MriOrder(
        "ServiceRequest/mri",
        {"resourceType": "ServiceRequest", "id": "mri"},
        region,
        contrast,
        "MRI",
        priority=priority,
    )
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
        acr_ratings=ACR_RATINGS,
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


def study(modality: str, region: str, days_ago: int, reference: str = "DiagnosticReport/prior") -> PriorImaging:
    return PriorImaging(modality, region, reference, f"{modality} {region} spine", TODAY - timedelta(days=days_ago))


def course(concept_id: str, days_ago: int, days: int | None, name: str = "drug") -> MedicationCourse:
    return MedicationCourse(
        concept_id, concept_id, f"MedicationRequest/{name}", name, TODAY - timedelta(days=days_ago), days
    )


# ------------------------------------------------------------------ urgent red flags (each escalates)


@pytest.mark.parametrize(
    "concept_id,region,variant,priority",
    [
        ("cauda_equina", "lumbar", "LBP-V4", "stat"),
        ("myelopathy", "cervical", "MYELO-V1", "urgent"),
        ("myelopathy", "thoracic", "TH-MYELO", "urgent"),
        ("spinal_cord_injury", "cervical", "TRAUMA-C", "stat"),
        ("spinal_infection", "lumbar", "LBP-V7", "urgent"),
        ("spinal_infection", "cervical", "CN-V4", "urgent"),
        ("spinal_infection", "thoracic", "TH-INFX", "urgent"),
        ("bacteremia_sepsis", "lumbar", "LBP-V7", "urgent"),
        ("cancer", "cervical", "CN-V5", "urgent"),
        ("cancer_history", "lumbar", "LBP-V7", "urgent"),
    ],
)
def test_each_urgent_red_flag_makes_mri_urgent_and_asks_for_the_priority(concept_id, region, variant, priority):
    verdict = decide(make_facts(region=region, findings=[finding(concept_id, weeks_ago(1))]))
    assert (verdict.code, verdict.variant_id, verdict.priority) == ("indicated-urgent", variant, priority)
    assert verdict.pama_rating == "appropriate"
    assert any(e.concept_id == concept_id for e in verdict.red_flags_found)


@pytest.mark.parametrize(
    "concept_id,kind",
    [
        ("cauda_equina", "surgical-referral"),
        ("myelopathy", "surgical-referral"),
        ("spinal_cord_injury", "surgical-referral"),
        ("spinal_infection", "blood-cultures"),
    ],
)
def test_an_urgent_card_names_the_next_step_the_guideline_names(concept_id, kind):
    region = "cervical" if concept_id in ("myelopathy", "spinal_cord_injury") else "lumbar"
    verdict = decide(make_facts(region=region, findings=[finding(concept_id, weeks_ago(1))]))
    assert kind in [step.kind for step in verdict.next_steps]
    assert not any("re-evaluated" in line or "update the record" in line for line in verdict.confirm)


def test_cancer_with_a_cord_sign_is_suspected_metastatic_cord_compression():
    verdict = decide(
        make_facts(findings=[finding("cancer_history", weeks_ago(300)), finding("myelopathy", weeks_ago(1))])
    )
    assert verdict.code == "indicated-urgent" and verdict.priority == "stat"
    assert "metastatic cord compression" in verdict.picture
    assert {"whole-spine", "surgical-referral"} <= {step.kind for step in verdict.next_steps}
    assert "24 hours" in (verdict.now or "") and "NICE_NG234" in verdict.guideline_ids


def test_a_draft_already_stat_needs_no_escalation():
    verdict = decide(make_facts(priority="stat", findings=[finding("cauda_equina", weeks_ago(1))]))
    assert verdict.code == "indicated-urgent" and verdict.priority is None
    urgent_enough = decide(make_facts(priority="urgent", findings=[finding("spinal_infection", weeks_ago(1))]))
    assert urgent_enough.priority is None
    not_enough = decide(make_facts(priority="urgent", findings=[finding("cauda_equina", weeks_ago(1))]))
    assert not_enough.priority == "stat"


def test_recent_fever_is_suspected_infection_with_contrast():
    verdict = decide(make_facts(findings=[finding("fever", TODAY - timedelta(days=3))]))
    assert verdict.code == "indicated-urgent"
    assert verdict.contrast == "with-and-without"


def test_old_fever_does_not_count_and_is_asked_about():
    verdict = decide(make_facts(findings=[finding("fever", TODAY - timedelta(days=200))]))
    assert verdict.code == "low-value"
    assert any(line.startswith("Fever dated") and "current" in line for line in verdict.confirm)
    assert "no red flag" not in verdict.picture  # a listed red flag is never called absent


def test_raised_markers_need_a_risk_factor_to_be_urgent():
    # Without a risk factor, raised markers are a weaker suspicion: radiographs (and ESR) first (ACP 2007).
    markers = finding("inflammatory_markers", TODAY - timedelta(days=2))
    assert decide(make_facts(findings=[markers])).code == "radiographs-first"
    with_risk = decide(make_facts(findings=[markers, finding("immunosuppression", weeks_ago(50))]))
    assert with_risk.code == "indicated-urgent"


@pytest.mark.parametrize("risk", ["ivdu", "immunosuppression"])
def test_infection_without_fever_risk_factor_and_raised_markers(risk):
    """A6: injection drug use (or opioid use disorder) or immunosuppression with a raised CRP/ESR:
    the infection variant, MRI without and with contrast, no fever needed."""
    markers = finding("inflammatory_markers", TODAY - timedelta(days=1), value="CRP 38 mg/L")
    verdict = decide(make_facts(findings=[markers, finding(risk, weeks_ago(150))]))
    assert (verdict.code, verdict.variant_id, verdict.contrast) == ("indicated-urgent", "LBP-V7", "with-and-without")
    assert any("CRP 38 mg/L" in line for line in verdict.why)


def test_red_flag_stated_on_the_order_counts_and_says_so():
    verdict = decide(make_facts(findings=[finding("cauda_equina", None, origin=FROM_ORDER)]))
    assert verdict.code == "indicated-urgent"
    assert any("(on the order)" in line for line in verdict.why)


@pytest.mark.parametrize("region,variant", [("cervical", "MYELO-V1"), ("thoracic", "TH-MYELO")])
def test_bladder_or_saddle_symptoms_above_the_lumbar_spine_are_cord_compression_and_image_both(region, variant):
    """A spine physician's review: retention with neck or thoracic pain is cord compression until
    shown otherwise, and cauda equina is lumbar: stat, surgery today, and a lumbar MRI as well.
    Never "no red flag" (the card said so before, the code being tagged lumbar)."""
    verdict = decide(make_facts(region=region, findings=[finding("cauda_equina", weeks_ago(0.3))]))
    assert (verdict.code, verdict.priority, verdict.variant_id) == ("indicated-urgent", "stat", variant)
    assert {"surgical-referral", "lumbar-spine"} <= {step.kind for step in verdict.next_steps}
    assert "cord compression" in verdict.picture and "lumbar spine" in (verdict.now or "")


def test_cancer_needs_contrast():
    verdict = decide(make_facts(contrast="with-and-without", findings=[finding("cancer", weeks_ago(100))]))
    assert verdict.contrast == "with-and-without"


# ------------------------------------------------------------------ A1 weakness the code cannot date or grade


def test_a_focal_deficit_that_began_in_this_episode_is_urgent_with_surgical_evaluation_now():
    """ACP 2007: severe or progressive deficits -> prompt MRI and surgical evaluation (not "if it
    progresses")."""
    verdict = decide(make_facts(pain_weeks=3, findings=[finding("progressive_neuro_deficit", weeks_ago(1))]))
    assert (verdict.code, verdict.priority) == ("indicated-urgent", "urgent")
    assert "surgical-referral" in [step.kind for step in verdict.next_steps]
    assert "refer to spinal surgery now" in (verdict.now or "") and "progresses" not in (verdict.now or "")


def test_a_gait_or_unspecific_weakness_code_is_never_urgent_by_itself_the_card_asks_to_examine():
    """R26 and R29.898 are not weakness: this episode's, the card warns and asks (new: urgent)."""
    verdict = decide(make_facts(pain_weeks=3, findings=[finding("possible_motor_deficit", weeks_ago(1))]))
    assert verdict.code == "indicated-routine" and verdict.ask_if_new and verdict.priority_if_new == "urgent"
    assert verdict.confirm == ["is there a new motor deficit on examination?"]
    neck = decide(
        make_facts(region="cervical", pain_weeks=3, findings=[finding("possible_motor_deficit", weeks_ago(1))])
    )
    assert neck.ask_if_new and "myelopathy?" in neck.picture


@pytest.mark.parametrize("when", [None, 40])
def test_a_focal_deficit_the_record_cannot_place_in_this_episode_asks_never_reassures(when):
    weakness = finding("progressive_neuro_deficit", weeks_ago(when) if when else None)
    verdict = decide(make_facts(pain_weeks=3, findings=[weakness]))
    assert verdict.code == "indicated-routine" and verdict.ask_if_new
    assert verdict.confirm == ["is the weakness new or worsening?"]
    # old and stable, nothing else calls for the MRI: the card's "old" answer is the low-value verdict
    assert verdict.if_old is not None and verdict.if_old[0] == "low-value"


@pytest.mark.parametrize("region", ["lumbar", "cervical"])
def test_an_old_bladder_code_asks_whether_it_is_new_never_stat_by_itself(region):
    """A retention code from 3 years ago (often the prostate) or an old cauda equina syndrome (often
    its residue): the card asks; new is stat."""
    old = finding("cauda_equina", weeks_ago(150))
    verdict = decide(make_facts(region=region, findings=[old]))
    assert verdict.code == "indicated-routine" and verdict.ask_if_new
    assert (verdict.priority_if_new, verdict.ask_what) == ("stat", "bladder or saddle symptoms")
    assert verdict.priority is None


def test_focal_deficit_on_the_order_is_urgent():
    verdict = decide(make_facts(findings=[finding("progressive_neuro_deficit", None, origin=FROM_ORDER)]))
    assert verdict.code == "indicated-urgent"


def test_weakness_without_a_dated_episode_is_this_episodes_when_recent():
    weakness = finding("progressive_neuro_deficit", weeks_ago(2))
    verdict = decide(make_facts(pain_weeks=None, findings=[weakness]))
    assert verdict.code == "indicated-urgent"


def test_a_deficit_recorded_in_the_last_12_weeks_is_new_even_before_the_pain_was_coded():
    weakness = finding("progressive_neuro_deficit", weeks_ago(4))
    assert decide(make_facts(pain_weeks=2, findings=[weakness])).code == "indicated-urgent"


# ------------------------------------------------------------------ A3 chronic states count while active


@pytest.mark.parametrize(
    "concept_id,expected,question",
    [
        ("ivdu", "indicated-routine", "still injecting?"),
        ("cancer_history", "indicated-urgent", None),
        ("osteoporosis_fracture", "indicated-routine", None),
        ("prior_spine_surgery", "indicated-routine", None),
        ("demyelinating_disease", "low-value", None),
    ],
)
def test_an_active_chronic_state_counts_whatever_its_recorded_date(concept_id, expected, question):
    """Counted while active; only a state that can end is asked about ("still injecting?"): a past
    operation, MS or osteoporosis is never "confirm it is current" (a spine physician's review)."""
    old = finding(concept_id, weeks_ago(52 * 4), dated_by="recorded")
    verdict = decide(make_facts(findings=[old]))
    assert verdict.code == expected
    assert any(e.concept_id == concept_id for e in verdict.red_flags_found) or expected == "low-value"
    asked = [line for line in verdict.confirm if "recorded" in line and line.endswith("?")]
    assert asked[0].endswith(question) if question else not asked, verdict.confirm
    assert not any("confirm it is current" in line for line in verdict.confirm)


def test_a_resolved_risk_counts_a_year_from_its_end_not_from_its_recorded_date():
    recent_end = finding("ivdu", weeks_ago(300), status="resolved", abated=TODAY - timedelta(days=100))
    assert decide(make_facts(findings=[recent_end])).code == "indicated-routine"
    long_ago = finding("ivdu", weeks_ago(300), status="resolved", abated=TODAY - timedelta(days=500))
    verdict = decide(make_facts(findings=[long_ago]))
    assert verdict.code == "low-value"
    assert any("resolved" in why for _, why in verdict.not_counted)


def test_an_episodic_finding_counts_from_its_onset_and_a_recorded_date_is_said():
    injury = finding("trauma", TODAY - timedelta(days=200), dated_by="recorded")
    verdict = decide(make_facts(findings=[injury]))
    assert verdict.code == "low-value"
    assert next(why for item, why in verdict.not_counted if item.concept_id == "trauma").startswith("recorded ")


# ------------------------------------------------ A4, A5 trauma to an ankylosed spine; after a procedure


@pytest.mark.parametrize("spine", ["axial_spa", "dish"])
def test_an_ankylosed_spine_after_any_injury_is_urgent_even_after_a_negative_ct(spine):
    injury = finding("recent_injury", TODAY - timedelta(days=3), region="cervical")
    facts = make_facts(
        region="cervical", findings=[injury, finding(spine, weeks_ago(400))], imaging=[study("ct", "cervical", 2)]
    )
    verdict = decide(facts)
    assert (verdict.code, verdict.priority) == ("indicated-urgent", "urgent")
    assert any("does not exclude" in line for line in verdict.why)


def test_new_pain_after_an_epidural_injection_is_a_haematoma_or_abscess_until_proven_otherwise():
    procedure = finding("neuraxial_procedure", TODAY - timedelta(days=6))
    verdict = decide(make_facts(pain_weeks=3 / 7, findings=[procedure]))
    assert (verdict.code, verdict.variant_id, verdict.priority) == ("indicated-urgent", "ASRA-HAEMATOMA", "urgent")
    anticoagulated = decide(
        make_facts(pain_weeks=3 / 7, findings=[procedure], medications=[course("anticoagulant_medication", 20, 90)])
    )
    assert anticoagulated.priority == "stat" and "anticoagulant" in (anticoagulated.now or "")


def test_pain_that_began_before_the_procedure_is_not_new_pain_after_it():
    procedure = finding("neuraxial_procedure", TODAY - timedelta(days=6))
    verdict = decide(make_facts(pain_weeks=8, findings=[procedure]))
    assert verdict.code != "indicated-urgent"


def test_a_procedure_weeks_ago_is_outside_the_window():
    procedure = finding("neuraxial_procedure", TODAY - timedelta(days=40))
    assert decide(make_facts(pain_weeks=1, findings=[procedure])).code != "indicated-urgent"


# ------------------------------------------------------------------ A7 demyelinating disease, A8 pregnancy


def test_ms_with_a_new_cord_symptom_is_indicated_from_the_problem_list_alone():
    facts = make_facts(
        region="cervical",
        pain_weeks=False,
        findings=[finding("demyelinating_disease", weeks_ago(300)), finding("paresthesia", weeks_ago(0.5))],
    )
    verdict = decide(facts)
    assert (verdict.code, verdict.variant_id, verdict.contrast) == (
        "indicated-routine",
        "DEMYEL-V1",
        "with-and-without",
    )


def test_ms_without_a_new_cord_symptom_is_rated_by_the_pain_rules():
    verdict = decide(make_facts(region="cervical", findings=[finding("demyelinating_disease", weeks_ago(300))]))
    assert verdict.code == "low-value"


def test_pregnancy_removes_nsaid_advice_and_gadolinium():
    pregnant = finding("pregnancy", weeks_ago(20))
    low_value = decide(make_facts(findings=[pregnant]))
    assert low_value.code == "low-value" and "NSAID" not in (low_value.now or "")
    assert "NSAID" in (decide(make_facts()).now or "")
    surgery = decide(
        make_facts(contrast="with-and-without", findings=[pregnant, finding("prior_spine_surgery", weeks_ago(200))])
    )
    assert surgery.contrast == "without" and "gadolinium" in surgery.contrast_reason


def test_a_pregnancy_entry_older_than_a_term_is_not_this_pregnancy():
    verdict = decide(make_facts(findings=[finding("pregnancy", weeks_ago(60))]))
    assert not verdict.pregnant


# ------------------------------------------------ B9 the PAMA rating follows ACR's rating of the study


@pytest.mark.parametrize("concept_id", ["osteoporosis_fracture", "long_term_steroids"])
def test_fracture_risk_keeps_mri_appropriate_and_offers_radiographs_first(concept_id):
    verdict = decide(make_facts(findings=[finding(concept_id, weeks_ago(100))]))
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-V6")
    assert verdict.first_study == "radiograph" and not verdict.first_study_required
    assert (verdict.acr_rating, verdict.pama_rating) == ("usually-appropriate", "appropriate")


def test_the_rating_is_of_the_study_ordered():
    v6 = [finding("osteoporosis_fracture", weeks_ago(100))]
    assert decide(make_facts(contrast="with-and-without", findings=v6)).acr_rating == "may-be-appropriate"
    infection = [finding("spinal_infection", weeks_ago(1))]
    contrast_only = decide(make_facts(region="thoracic", contrast="with", findings=infection))
    assert (contrast_only.acr_rating, contrast_only.pama_rating) == ("usually-not-appropriate", "not-appropriate")


def test_may_be_appropriate_adheres():
    verdict = decide(make_facts(region="cervical", pain_weeks=2))  # CN-V1: MRI may be appropriate
    assert (verdict.code, verdict.pama_rating) == ("low-value", "appropriate")


@pytest.mark.parametrize(
    "age,sex,expected",
    [
        (66, "male", "indicated-routine"),
        (65, "male", "low-value"),
        (75, "female", "low-value"),
        (76, "female", "indicated-routine"),
    ],
)
def test_age_fracture_thresholds_follow_acp(age, sex, expected):
    # ACP 2007: men over 65, women over 75 (ACR LBP V6 'elderly'). A 2-week episode keeps age > 50 out.
    assert decide(make_facts(age=age, sex=sex, pain_weeks=2)).code == expected


# ------------------------------------------------------------------ B10 age alone is never the frame


def test_sciatica_in_an_older_patient_is_rated_as_sciatica():
    radicular = [finding("radiculopathy", weeks_ago(3))]
    verdict = decide(make_facts(age=70, sex="male", pain_weeks=3, findings=radicular))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V1")
    over50 = decide(make_facts(age=60, sex="male", pain_weeks=8, findings=[finding("radiculopathy", weeks_ago(8))]))
    assert over50.variant_id == "LBP-V2" and not any("age" in line for line in over50.why)


def test_prior_surgery_beats_age():
    verdict = decide(make_facts(age=58, pain_weeks=8, findings=[finding("prior_spine_surgery", weeks_ago(300))]))
    assert verdict.variant_id == "LBP-V5"


def test_age_over_50_waits_a_month_then_radiographs_and_never_headlines():
    assert decide(make_facts(age=55, sex="male", pain_weeks=2)).code == "low-value"
    verdict = decide(make_facts(age=55, sex="male", pain_weeks=7))
    assert verdict.code == "radiographs-first"
    assert not verdict.picture.lower().startswith("age")


# ------------------------------------------------ B11 a first study done is not the next step by itself


def test_chronic_neck_pain_radiographs_first_then_low_value_after_degenerative_films():
    assert decide(make_facts(region="cervical", pain_weeks=16)).variant_id == "CN-V7"
    after = decide(make_facts(region="cervical", pain_weeks=16, imaging=[study("radiograph", "cervical", 28)]))
    assert (after.code, after.variant_id) == ("low-value", "CN-V8-NO-SIGNS")


def test_chronic_axial_back_pain_after_radiographs_stays_low_value():
    verdict = decide(make_facts(pain_weeks=14, imaging=[study("radiograph", "lumbar", 21)]))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V2")


def test_age_alone_after_negative_radiographs_is_not_an_open_question():
    verdict = decide(make_facts(age=55, sex="male", pain_weeks=8, imaging=[study("radiograph", "lumbar", 7)]))
    assert verdict.code == "low-value"


def test_raised_markers_after_negative_radiographs_keep_the_question_open():
    markers = finding("inflammatory_markers", TODAY - timedelta(days=3))
    verdict = decide(make_facts(findings=[markers], imaging=[study("radiograph", "lumbar", 4)]))
    # its own scenario (ACP's radiographs-and-ESR strategy), not "weaker cancer risk"
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-ACP-MARKERS")
    assert verdict.contrast == "with-and-without"


def test_fracture_risk_after_radiographs_makes_mri_the_next_study():
    xray = study("radiograph", "lumbar", 7)
    verdict = decide(make_facts(findings=[finding("osteoporosis_fracture", weeks_ago(100))], imaging=[xray]))
    assert verdict.code == "indicated-routine" and verdict.first_study is None
    assert verdict.picture.endswith("MRI next") and "lumbar radiographs 1 week ago" in verdict.picture


def test_radiographs_of_another_region_or_before_the_episode_or_a_year_ago_do_not_count():
    risk = [finding("weight_loss", weeks_ago(3))]
    for imaging in (
        [study("radiograph", "cervical", 7)],
        [study("radiograph", "lumbar", 60)],
        [study("radiograph", "lumbar", 400)],
    ):
        assert decide(make_facts(pain_weeks=5, findings=risk, imaging=imaging)).code == "radiographs-first", imaging


def test_unread_prior_imaging_is_asked_about_on_a_first_study_card():
    verdict = decide(
        make_facts(
            pain_weeks=5, findings=[finding("weight_loss", weeks_ago(3))], unread={"diagnosticReports": "timeout"}
        )
    )
    assert verdict.code == "radiographs-first"
    assert any("prior imaging could not be read" in line for line in verdict.confirm)


# ------------------------------------------------------------------ B12 injuries; trauma (ACR Suspected Spine Trauma)


def injury(days_ago=2, region="cervical") -> Evidence:
    return finding("recent_injury", TODAY - timedelta(days=days_ago), region=region)


def test_neck_injury_at_65_or_older_means_ct_first():
    verdict = decide(make_facts(region="cervical", age=70, sex="female", findings=[injury()]))
    assert (verdict.code, verdict.first_study, verdict.variant_id) == ("radiographs-first", "ct", "TRAUMA-C")


@pytest.mark.parametrize("factor", ["dangerous_mechanism", "paresthesia"])
def test_each_high_risk_factor_after_neck_injury_means_ct_first(factor):
    verdict = decide(make_facts(region="cervical", age=40, findings=[injury(), finding(factor, weeks_ago(1))]))
    assert (verdict.code, verdict.first_study) == ("radiographs-first", "ct")


def test_low_risk_neck_injury_needs_no_imaging():
    verdict = decide(make_facts(region="cervical", age=40, pain_weeks=2, findings=[injury(14)]))
    assert (verdict.code, verdict.variant_id) == ("low-value", "TRAUMA-C-LOW")


def test_after_a_negative_ct_mri_is_for_a_neurological_finding():
    verdict = decide(make_facts(region="cervical", age=70, findings=[injury(3)], imaging=[study("ct", "cervical", 2)]))
    assert verdict.code == "low-value" and verdict.override_set == "trauma"


def test_ct_before_the_injury_does_not_count():
    verdict = decide(make_facts(region="cervical", age=70, findings=[injury(3)], imaging=[study("ct", "cervical", 20)]))
    assert verdict.code == "radiographs-first"


def test_recent_trauma_means_ct_first():
    verdict = decide(make_facts(findings=[finding("trauma", TODAY - timedelta(days=5))]))
    assert (verdict.code, verdict.first_study) == ("radiographs-first", "ct")


def test_thoracolumbar_injury_in_an_older_patient_is_fracture_risk():
    verdict = decide(make_facts(age=68, sex="female", findings=[injury(5, "lumbar")]))
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "LBP-V6")


def test_thoracolumbar_sprain_in_a_young_patient_is_back_pain():
    verdict = decide(make_facts(age=30, findings=[injury(5, "lumbar")]))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V1")


def test_injury_older_than_90_days_is_not_recent_and_says_so():
    verdict = decide(make_facts(region="cervical", age=70, findings=[injury(200)]))
    assert verdict.code != "radiographs-first"
    assert any(item.concept_id == "recent_injury" for item, _ in verdict.not_counted)


# ------------------------------------------------------------------ 13a-c what an entry really is; follow-up; children


def test_a_healed_resolved_fracture_is_history():
    old = finding("trauma", weeks_ago(250), status="resolved", abated=TODAY - timedelta(days=1400))
    verdict = decide(make_facts(findings=[old]))
    assert verdict.code == "low-value"


def test_follow_up_of_a_treated_infection_with_nothing_new_is_low_value():
    treated = finding("spinal_infection", weeks_ago(20), status="resolved", abated=weeks_ago(6))
    follow_up = finding("follow_up_encounter", None, origin=FROM_ORDER)
    mri = study("mri", "lumbar", 70)
    verdict = decide(make_facts(pain_weeks=22, findings=[treated, follow_up], imaging=[mri]))
    assert (verdict.code, verdict.variant_id) == ("low-value", "FOLLOW-UP")
    assert "IDSA_2015" in verdict.guideline_ids


def test_a_clinical_change_after_that_mri_makes_it_indicated_again():
    treated = finding("spinal_infection", weeks_ago(20), status="resolved", abated=weeks_ago(6))
    fever = finding("fever", TODAY - timedelta(days=2))
    verdict = decide(make_facts(pain_weeks=22, findings=[treated, fever], imaging=[study("mri", "lumbar", 70)]))
    assert verdict.code == "indicated-urgent"


def test_an_adolescent_with_suspected_spondylolysis_gets_radiographs_first():
    verdict = decide(make_facts(age=15, sex="male", pain_weeks=4, findings=[finding("spondylolysis", weeks_ago(1))]))
    assert (verdict.code, verdict.variant_id, verdict.first_study) == (
        "radiographs-first",
        "CHILD-SPONDYLOLYSIS",
        "radiograph",
    )


def test_a_childs_back_pain_without_a_red_flag_is_low_value_and_asks_a_childs_red_flags():
    verdict = decide(make_facts(age=16, pain_weeks=3))
    assert (verdict.code, verdict.variant_id) == ("low-value", "CHILD-V1")
    assert "night pain" in " ".join(verdict.confirm)


def test_a_childs_red_flag_still_escalates():
    assert decide(make_facts(age=14, findings=[finding("fever", TODAY - timedelta(days=1))])).code == "indicated-urgent"


# ------------------------------------------------------------------ routine indications


def test_lumbar_prior_surgery_is_indicated_with_contrast_suggested():
    verdict = decide(make_facts(findings=[finding("prior_spine_surgery", weeks_ago(100))]))
    assert (verdict.code, verdict.variant_id, verdict.contrast) == ("indicated-routine", "LBP-V5", "with-and-without")


def test_cervical_prior_surgery_is_radiographs_first_with_mri_may_be_appropriate():
    verdict = decide(make_facts(region="cervical", findings=[finding("prior_spine_surgery", weeks_ago(100))]))
    assert (verdict.code, verdict.variant_id, verdict.pama_rating) == ("radiographs-first", "CN-V3", "appropriate")


def test_radiculopathy_after_six_weeks_of_therapy_is_indicated():
    facts = make_facts(pain_weeks=10, findings=[finding("radiculopathy", weeks_ago(10))], therapy=[physical_therapy(8)])
    verdict = decide(facts)
    assert (verdict.code, verdict.variant_id, verdict.contrast) == ("indicated-routine", "LBP-V3", "without")


def test_radiculopathy_after_four_weeks_of_therapy_is_low_value():
    facts = make_facts(pain_weeks=10, findings=[finding("radiculopathy", weeks_ago(10))], therapy=[physical_therapy(4)])
    assert decide(facts).code == "low-value"


def test_undated_therapy_with_radiculopathy_cannot_be_rated():
    facts = make_facts(pain_weeks=None, findings=[finding("radiculopathy", None)], therapy=[physical_therapy(None)])
    verdict = decide(facts)
    assert verdict.code == "insufficient-information" and verdict.pama_rating is None


def test_axial_pain_after_therapy_is_still_low_value():
    verdict = decide(make_facts(pain_weeks=12, therapy=[physical_therapy(9)]))
    assert verdict.code == "low-value"
    assert "does not change" in (verdict.now or "")


def test_analgesic_prescription_counts_as_therapy():
    analgesic = course("analgesic_medication", 49, 30, "ibuprofen")
    facts = make_facts(pain_weeks=8, findings=[finding("radiculopathy", weeks_ago(8))], medications=[analgesic])
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


def test_infection_risk_factor_alone_is_indicated_with_contrast():
    verdict = decide(make_facts(findings=[finding("ivdu", weeks_ago(10))]))
    assert (verdict.code, verdict.variant_id, verdict.contrast) == ("indicated-routine", "LBP-V7", "with-and-without")


def test_weight_loss_and_spondyloarthritis_mean_radiographs_first():
    for concept_id in ("weight_loss", "axial_spa"):
        verdict = decide(make_facts(findings=[finding(concept_id, weeks_ago(3))]))
        assert (verdict.code, verdict.variant_id) == ("radiographs-first", "LBP-ACP-DEFER"), concept_id
        assert verdict.first_study_required


def test_new_fragility_vertebral_fracture_makes_mri_indicated():
    fracture = finding("vertebral_fracture", weeks_ago(1), region="lumbar")
    verdict = decide(
        make_facts(age=80, sex="female", findings=[fracture, finding("osteoporosis_fracture", weeks_ago(1))])
    )
    assert (verdict.code, verdict.variant_id, verdict.pama_rating) == ("indicated-routine", "VCF-V1", "appropriate")


def test_vertebral_fracture_in_a_young_patient_without_fragility_is_trauma_ct_first():
    fracture = finding("vertebral_fracture", weeks_ago(1), region="lumbar")
    verdict = decide(make_facts(age=35, sex="male", findings=[fracture, finding("trauma", weeks_ago(1))]))
    assert (verdict.code, verdict.first_study) == ("radiographs-first", "ct")


# ------------------------------------------------------------------ low value and missing data


def test_acute_pain_without_red_flags_is_low_value_v1():
    verdict = decide(make_facts(pain_weeks=2))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V1")
    assert verdict.suggest_cancel
    assert "Cauda equina syndrome" in verdict.red_flags_absent


def test_chronic_pain_without_therapy_is_low_value_v2():
    verdict = decide(make_facts(pain_weeks=10))
    assert (verdict.code, verdict.variant_id) == ("low-value", "LBP-V2")
    assert "6 weeks of therapy" in (verdict.now or "")


def test_undated_pain_is_low_value_either_way():
    assert decide(make_facts(pain_weeks=None)).code == "low-value"


def test_no_indication_documented_cannot_be_rated():
    verdict = decide(make_facts(pain_weeks=False))
    assert verdict.code == "insufficient-information"
    assert verdict.pama_rating is None
    assert verdict.not_documented and verdict.missing == []


def test_an_indication_of_another_region_is_named_not_called_missing():
    lumbar_reason = finding("radiculopathy", None, origin=FROM_ORDER, region="lumbar")
    verdict = decide(make_facts(region="cervical", pain_weeks=False, findings=[lumbar_reason]))
    assert verdict.code == "insufficient-information"
    assert "lumbar spine" in verdict.picture and "order's reason" in verdict.picture


def test_missing_source_blocks_low_value_and_absence_is_not_asserted():
    verdict = decide(make_facts(unread={"medications": "not in the prefetch"}))
    assert verdict.code == "insufficient-information"
    assert any("MedicationRequests" in item for item in verdict.missing)
    assert verdict.red_flags_absent == []


def test_found_red_flag_rates_even_with_missing_sources():
    facts = make_facts(findings=[finding("cauda_equina", weeks_ago(1))], unread={"medications": "x", "procedures": "z"})
    assert decide(facts).code == "indicated-urgent"


def test_thoracic_nonspecific_is_extrapolated_and_rated_no_criteria():
    verdict = decide(make_facts(region="thoracic", pain_weeks=1))
    assert (verdict.code, verdict.extrapolated, verdict.pama_rating) == ("low-value", True, "no-criteria-apply")


def test_thoracic_infection_rates_appropriate():
    verdict = decide(make_facts(region="thoracic", findings=[finding("spinal_infection", weeks_ago(1))]))
    assert verdict.pama_rating == "appropriate"


# ------------------------------------------------------------------ steroid duration


def test_steroid_days_counts_supply_within_the_last_year_once():
    long_course = course("systemic_corticosteroid", 150, 120, "a")
    overlapping = course("systemic_corticosteroid", 100, 30, "b")
    assert steroid_days([long_course], TODAY) == 120
    assert steroid_days([long_course, overlapping], TODAY) == 120
    assert steroid_days([course("systemic_corticosteroid", 20, 5, "c")], TODAY) == 5


def test_long_steroid_prescriptions_are_fracture_risk_and_bursts_are_not():
    assert decide(make_facts(medications=[course("systemic_corticosteroid", 150, 120)])).variant_id == "LBP-V6"
    assert decide(make_facts(medications=[course("systemic_corticosteroid", 20, 5)])).code == "low-value"


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
    assert "lumbar MRI 3 months ago" in verdict.picture


def test_finding_recorded_after_the_mri_is_rated_as_new():
    facts = make_facts(
        pain_weeks=20,
        findings=[finding("radiculopathy", weeks_ago(9))],
        therapy=[physical_therapy(8)],
        imaging=[study("mri", "lumbar", 91)],
    )
    assert decide(facts).code == "indicated-routine"


def test_urgent_red_flag_keeps_urgent_despite_a_recent_mri_and_names_it():
    verdict = decide(make_facts(findings=[finding("cauda_equina", weeks_ago(1))], imaging=[study("mri", "lumbar", 30)]))
    assert verdict.code == "indicated-urgent"
    assert any("lumbar MRI" in line for line in verdict.why)


def test_mri_of_another_region_is_not_a_repeat():
    facts = make_facts(
        pain_weeks=20,
        findings=[finding("radiculopathy", weeks_ago(20))],
        therapy=[physical_therapy(18)],
        imaging=[study("mri", "cervical", 91)],
    )
    assert decide(facts).code == "indicated-routine"


def test_card_lists_prior_imaging_of_the_region_in_words():
    verdict = decide(make_facts(imaging=[study("radiograph", "lumbar", 21), study("mri", "cervical", 30)]))
    assert len(verdict.prior_imaging) == 1
    assert verdict.prior_imaging[0].startswith("lumbar radiographs 3 weeks ago")


# ------------------------------------------------------------------ C: one region, no contradictions, plain words


def test_a_red_flag_of_another_region_is_not_counted_never_absent():
    verdict = decide(make_facts(region="cervical", findings=[finding("cauda_equina", weeks_ago(1), region="lumbar")]))
    assert "Cauda equina syndrome" not in verdict.red_flags_absent
    assert [(item.concept_id, "lumbar" in why) for item, why in verdict.not_counted] == [("cauda_equina", True)]


@pytest.mark.parametrize("region", ["cervical", "thoracic"])
def test_neck_and_thoracic_verdicts_name_no_lumbar_red_flag_or_source(region):
    for findings in (
        [],
        [finding("cauda_equina", weeks_ago(1), region="lumbar")],
        [finding("myelopathy", weeks_ago(1))],
    ):
        verdict = decide(make_facts(region=region, findings=findings))
        words = " ".join(
            [verdict.picture, *verdict.why, verdict.now or "", *verdict.confirm, *verdict.red_flags_absent]
        )
        assert "cauda equina" not in words.lower() and "saddle" not in words.lower(), (region, findings)
        assert not {"NICE_NG59", "ACP_2017", "ACP_APS_2007", "CW_NASS", "CW_AAFP"} & set(verdict.guideline_ids)


@pytest.mark.parametrize(
    "facts",
    [
        make_facts(),
        make_facts(findings=[finding("cauda_equina", weeks_ago(1))]),
        make_facts(findings=[finding("fever", TODAY - timedelta(days=200))]),
        make_facts(findings=[finding("osteoporosis_fracture", weeks_ago(100))]),
        make_facts(region="cervical", pain_weeks=10),
    ],
)
def test_a_finding_is_never_both_found_and_absent(facts):
    verdict = decide(facts)
    found = {e.label for e in verdict.red_flags_found} | {e.label for e, _ in verdict.not_counted}
    assert not found & set(verdict.red_flags_absent)


def test_summaries_use_words_for_comparisons():
    verdict = decide(make_facts(age=55, sex="male", pain_weeks=7))
    assert "<" not in verdict.picture and ">" not in verdict.picture
    assert all("<" not in line and ">" not in line for line in verdict.why)


def test_resolved_or_entered_in_error_red_flags_are_set_aside_never_absent():
    facts = make_facts()
    facts.set_aside = [(finding("cauda_equina", weeks_ago(100)), "verification status entered-in-error")]
    verdict = decide(facts)
    assert verdict.code == "low-value"
    assert "Cauda equina syndrome" not in verdict.red_flags_absent


@pytest.mark.parametrize("weeks,words", [(1, "1 week"), (1 / 7, "1 day"), (3, "3 weeks"), (0.3, "2 days")])
def test_durations_are_singular_or_plural(weeks, words):
    from cds_service.clinical.rules import format_weeks

    assert format_weeks(weeks) == words


# ------------------------------------------------------------------ the rules and the mappings fit


def test_the_rules_name_only_knowledge_the_mappings_define(mappings):
    import inspect
    import re

    from cds_service.clinical import findings, rules

    assert rules.knowledge_gaps(mappings) == []
    # every variant and guideline the rules' source names literally is in the lists checked at start-up
    source = inspect.getsource(rules) + inspect.getsource(findings)
    literal_variants = set(re.findall(r'variant_id="([A-Z0-9-]+)"', source))
    assert literal_variants <= set(rules.NAMED_VARIANTS)
    cited = {
        g
        for group in re.findall(r"guideline_ids=\[([^\]]*)\]", source)
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


# ------------------------------------------------------------------ a spine physician's review (card review)


def test_a_diagnosed_epidural_abscess_is_stat_with_surgery_today_cultures_and_contrast():
    verdict = decide(make_facts(findings=[finding("epidural_abscess", TODAY - timedelta(days=1))]))
    assert (verdict.code, verdict.priority, verdict.contrast) == ("indicated-urgent", "stat", "with-and-without")
    assert {"surgical-referral", "blood-cultures"} <= {step.kind for step in verdict.next_steps}
    assert "epidural abscess" in verdict.picture and "suspected" not in verdict.picture


def test_every_urgent_finding_counts_the_dominant_one_is_named_first():
    """An abscess with new weakness was once the weakness's card (urgent, no contrast, referral "if
    it progresses"): every urgent rule is read, the highest priority, every next step, the most
    demanding contrast, and one referral."""
    verdict = decide(
        make_facts(
            findings=[
                finding("epidural_abscess", TODAY - timedelta(days=2)),
                finding("progressive_neuro_deficit", TODAY - timedelta(days=1)),
            ]
        )
    )
    assert verdict.picture == "spinal epidural abscess in the record with new weakness"
    assert (verdict.priority, verdict.contrast) == ("stat", "with-and-without")
    assert {e.concept_id for e in verdict.red_flags_found} >= {"epidural_abscess", "progressive_neuro_deficit"}
    now = verdict.now or ""
    assert now.count("refer to spinal surgery") == 1 and "blood cultures" in now
    infection = decide(
        make_facts(
            findings=[finding("fever", TODAY - timedelta(days=2)), finding("progressive_neuro_deficit", weeks_ago(1))]
        )
    )
    assert infection.picture == "suspected spinal infection with new weakness"
    assert {"surgical-referral", "blood-cultures"} <= {step.kind for step in infection.next_steps}


def test_cancer_with_new_bladder_symptoms_is_metastatic_compression_not_a_plain_cauda_equina_card():
    verdict = decide(
        make_facts(findings=[finding("cancer_history", weeks_ago(250)), finding("cauda_equina", weeks_ago(0.2))])
    )
    assert "metastatic cord compression" in verdict.picture and verdict.priority == "stat"
    assert "whole-spine" in {step.kind for step in verdict.next_steps}
    assert "within a week" not in (verdict.now or "")  # the plain cancer rule does not speak as well


def test_new_weakness_after_spine_surgery_names_the_surgery_and_wants_contrast():
    verdict = decide(
        make_facts(
            findings=[
                finding("prior_spine_surgery", weeks_ago(100)),
                finding("progressive_neuro_deficit", weeks_ago(0.5)),
            ]
        )
    )
    assert verdict.code == "indicated-urgent" and "after spine surgery" in verdict.picture
    assert verdict.contrast == "with-and-without" and "spinal surgeon who operated" not in (verdict.now or "")


@pytest.mark.parametrize("risk", ["ivdu", "immunosuppression", "diabetes"])
def test_raised_markers_with_diabetes_injection_drug_use_or_immunosuppression_are_suspected_infection(risk):
    markers = finding("inflammatory_markers", TODAY - timedelta(days=2), value="CRP 60 mg/L")
    verdict = decide(make_facts(pain_weeks=3, findings=[markers, finding(risk, weeks_ago(500))]))
    assert (verdict.code, verdict.contrast) == ("indicated-urgent", "with-and-without")


def test_diabetes_alone_is_not_a_reason_for_mri():
    verdict = decide(make_facts(findings=[finding("diabetes", weeks_ago(500))]))
    assert verdict.code == "low-value"
    assert "diabetes" in {e.concept_id for e in verdict.red_flags_found}  # reported, not asked as absent


def test_stimulant_use_is_not_injection_drug_use_the_card_asks_and_never_recommends_cancelling():
    markers = finding("inflammatory_markers", TODAY - timedelta(days=2), value="CRP 14 mg/L")
    verdict = decide(make_facts(findings=[markers, finding("stimulant_use", weeks_ago(100))]))
    assert verdict.code == "radiographs-first"
    assert verdict.doubts and "inject" in verdict.doubts[0]
    assert verdict.picture.startswith("stimulant use disorder in the record")


@pytest.mark.parametrize("region,question", [("lumbar", "Variant 5"), ("cervical", "Variant 3")])
def test_arthrodesis_of_any_joint_is_asked_about_never_read_as_spine_surgery(region, question):
    verdict = decide(make_facts(region=region, findings=[finding("arthrodesis_status", weeks_ago(150))]))
    assert verdict.code == "low-value" and "prior_spine_surgery" not in {e.concept_id for e in verdict.red_flags_found}
    assert question in verdict.doubts[0] and "was it a" in verdict.doubts[0]
    assert "no red flag" not in verdict.picture and "no red flag recorded" not in verdict.why


def test_numbness_in_this_episode_asks_where_saddle_numbness_is_an_emergency():
    verdict = decide(make_facts(findings=[finding("numbness", TODAY - timedelta(days=3))]))
    assert verdict.code == "low-value" and verdict.picture.startswith("numbness 3 days ago")
    assert "Saddle numbness" in verdict.doubts[0]
    old = decide(make_facts(findings=[finding("numbness", weeks_ago(100))]))
    assert not old.doubts  # years-old numbness is not this episode's question


def test_a_preliminary_fever_or_a_value_in_an_unknown_unit_is_named_and_asked_never_reassured():
    """Set aside by facts.py (not counted), never silent: the card leads with it."""
    for why, state in (("preliminary result, not yet verified", "preliminary"), ("unit 'K' not recognised", "unit")):
        fever = finding("fever", TODAY - timedelta(days=1), value="Body temperature 39 °C", status=state)
        facts = make_facts()
        facts.set_aside.append((fever, why))
        verdict = decide(facts)
        assert verdict.code == "low-value"
        assert verdict.picture.startswith("body temperature 39 °C (")
        assert verdict.doubts == ["confirm it: a fever makes the MRI urgent"]
        assert "no red flag recorded" not in verdict.why
        assert not any("fever" in line for line in verdict.confirm if line.startswith("not in the record"))


def test_age_is_a_fracture_risk_for_back_pain_only_neck_pain_at_68_is_rated_alike_for_men_and_women():
    man = decide(make_facts(region="cervical", age=68, sex="male"))
    woman = decide(make_facts(region="cervical", age=68, sex="female"))
    assert (man.code, man.variant_id) == (woman.code, woman.variant_id) == ("low-value", "CN-V1")
    assert decide(make_facts(region="lumbar", age=72, sex="male")).variant_id == "LBP-V6"


def test_chronic_neck_pain_with_arm_paresthesia_after_radiographs_is_variant_8_with_symptoms():
    xray = study("radiograph", "cervical", 40)
    verdict = decide(
        make_facts(region="cervical", pain_weeks=20, findings=[finding("paresthesia", weeks_ago(8))], imaging=[xray])
    )
    assert (verdict.code, verdict.variant_id) == ("indicated-routine", "CN-V8")
    assert "no radiculopathy" not in verdict.picture


def test_therapy_begun_but_short_of_six_weeks_says_continue_not_start():
    pt = physical_therapy(3)
    verdict = decide(make_facts(pain_weeks=8, findings=[finding("radiculopathy", weeks_ago(8))], therapy=[pt]))
    assert verdict.code == "low-value"
    assert (verdict.now or "").startswith("Continue therapy to 6 weeks (3 more)")


def test_cervical_stenosis_is_not_radiculopathy_its_question_is_myelopathy():
    verdict = decide(make_facts(region="cervical", pain_weeks=8, findings=[finding("stenosis", weeks_ago(8))]))
    assert verdict.picture == "cervical spinal stenosis for 8 weeks: myelopathy?"


def test_a_contrast_only_mri_the_variant_does_not_rate_does_not_adhere():
    from cds_service.clinical.rules import pama_rating

    assert pama_rating("indicated-routine", "LBP-V3", "mri-with", False, ACR_RATINGS) == ("not-appropriate", None)
    assert pama_rating("indicated-routine", "LBP-V3", "mri-without", False, ACR_RATINGS)[0] == "appropriate"


def test_weaker_cancer_risks_are_not_given_a_rating_acr_did_not_give():
    """ACP's weight loss or raised markers: ACR rates them under Variant 7 or not at all: PAMA
    "no criteria apply"; age over 50 alone stays ACR Variant 1's "not appropriate"."""
    loss = decide(make_facts(pain_weeks=5, findings=[finding("weight_loss", weeks_ago(4))]))
    assert (loss.code, loss.pama_rating) == ("radiographs-first", "no-criteria-apply")
    age = decide(make_facts(pain_weeks=7, age=55))
    assert (age.code, age.pama_rating) == ("radiographs-first", "not-appropriate")


def test_prior_lumbar_surgery_offers_contrast_without_pressing_it():
    verdict = decide(make_facts(findings=[finding("prior_spine_surgery", weeks_ago(100))]))
    assert (verdict.contrast, verdict.contrast_optional) == ("with-and-without", True)


# ------------------------------------------------------------------ a second review


def test_new_is_measured_by_the_entrys_own_date_not_by_a_chronic_episode():
    """Low back pain on the problem list for 5 years made a 3-year-old monoplegia "new"."""
    old_weakness = finding("progressive_neuro_deficit", weeks_ago(156))
    verdict = decide(make_facts(pain_weeks=260, findings=[old_weakness]))
    assert verdict.code == "indicated-routine" and verdict.ask_if_new
    old_retention = finding("cauda_equina", weeks_ago(156))
    assert decide(make_facts(pain_weeks=208, findings=[old_retention])).ask_if_new


def test_a_myelopathy_known_for_years_is_asked_about_a_new_one_is_urgent():
    old = decide(make_facts(region="cervical", findings=[finding("myelopathy", weeks_ago(300))]))
    assert old.code == "indicated-routine" and old.ask_if_new and old.ask_what == "myelopathic signs"
    new = decide(make_facts(region="cervical", findings=[finding("myelopathy", weeks_ago(2))]))
    assert new.code == "indicated-urgent"
    with_cancer = decide(
        make_facts(
            region="cervical",
            findings=[finding("myelopathy", weeks_ago(150)), finding("cancer_history", weeks_ago(300))],
        )
    )
    assert "metastatic" not in with_cancer.picture  # an old myelopathy is not a new neurological symptom


@pytest.mark.parametrize("sign", ["possible_motor_deficit", "numbness"])
def test_with_cancer_a_new_gait_or_numbness_code_is_metastatic_cord_compression(sign):
    """NICE NG234: difficulty walking and sensory change are neurological symptoms of MSCC."""
    verdict = decide(make_facts(findings=[finding("cancer", weeks_ago(30)), finding(sign, TODAY - timedelta(days=2))]))
    assert verdict.priority == "stat" and "metastatic cord compression" in verdict.picture
    assert "whole-spine" in {step.kind for step in verdict.next_steps}


def test_a_new_deficit_on_an_anticoagulant_is_stat_and_names_it():
    verdict = decide(
        make_facts(
            findings=[
                finding("progressive_neuro_deficit", TODAY - timedelta(days=1)),
                finding("anticoagulant_medication", weeks_ago(20)),
                finding("recent_injury", TODAY - timedelta(days=2)),
            ]
        )
    )
    assert verdict.priority == "stat" and "anticoagulant" in verdict.picture and "injury" in verdict.picture
    assert "check clotting" in (verdict.now or "")


def test_pain_days_after_spine_surgery_is_expected_a_new_deficit_is_not():
    surgery = finding("prior_spine_surgery", TODAY - timedelta(days=5))
    pain_only = decide(make_facts(pain_weeks=0.3, findings=[surgery]))
    assert pain_only.code == "indicated-routine" and "wound discharge" in pain_only.confirm[0]
    deficit = decide(make_facts(pain_weeks=0.3, findings=[surgery, finding("progressive_neuro_deficit", TODAY)]))
    assert (deficit.code, deficit.priority) == ("indicated-urgent", "stat")


@pytest.mark.parametrize(
    "age,pain_weeks,findings,flag",
    [
        (11, 5, [finding("weight_loss", weeks_ago(4))], "weight loss"),
        (13, 2, [finding("long_term_steroids", weeks_ago(20))], "long-term steroids"),
        (9, 10, [], "pain over 4 weeks"),
        (4, 1, [], "under 5"),
    ],
)
def test_a_childs_red_flag_means_radiographs_first_never_low_value(age, pain_weeks, findings, flag):
    """ACR Back Pain-Child V2 (a second review: a child with weight loss was told "no red flag")."""
    verdict = decide(make_facts(age=age, pain_weeks=pain_weeks, findings=findings))
    assert (verdict.code, verdict.variant_id) == ("radiographs-first", "CHILD-V2")
    assert flag in verdict.picture and not verdict.suggest_cancel
    plain = decide(make_facts(age=12, pain_weeks=2))
    assert (plain.code, plain.variant_id) == ("low-value", "CHILD-V1")


def test_a_resolved_cauda_equina_still_leaves_its_question_asked():
    past = finding("cauda_equina", weeks_ago(150), status="resolved", abated=weeks_ago(100))
    verdict = decide(make_facts(findings=[past]))
    assert verdict.code == "low-value"
    assert any("saddle numbness or urinary retention" in line for line in verdict.confirm)


def test_a_cervical_fracture_in_an_older_osteoporotic_patient_is_trauma_not_a_fragility_fracture():
    facts = make_facts(
        region="cervical",
        age=80,
        findings=[
            finding("vertebral_fracture", TODAY - timedelta(days=2)),
            finding("trauma", TODAY - timedelta(days=2)),
            finding("osteoporosis_fracture", weeks_ago(200)),
        ],
    )
    verdict = decide(facts)
    assert verdict.variant_id == "TRAUMA-C" and "augmentation" not in (verdict.now or "")


def test_a_doubt_on_an_indicated_verdict_is_asked_too_and_the_order_waits_for_its_rating():
    """HIV with a preliminary 39.1: the card once asked to "check temperature today"."""
    fever = finding("fever", TODAY - timedelta(days=1), value="Body temperature 39.1 °C", status="preliminary")
    facts = make_facts(findings=[finding("immunosuppression", weeks_ago(200))])
    facts.set_aside.append((fever, "preliminary result, not yet verified"))
    verdict = decide(facts)
    assert verdict.code == "indicated-routine" and verdict.doubts and verdict.if_confirmed == "urgent"
    assert verdict.picture.startswith("body temperature 39.1 °C (preliminary)")
    assert verdict.pama_rating is None


def test_fever_with_neck_pain_asks_about_meningitis_first():
    verdict = decide(make_facts(region="cervical", findings=[finding("fever", TODAY - timedelta(days=1))]))
    assert "meningitis" in (verdict.now or "")


def test_long_durations_read_in_months_and_years():
    from cds_service.clinical.wording import format_weeks

    assert [format_weeks(w) for w in (0.5, 3, 30, 261)] == ["4 days", "3 weeks", "7 months", "5 years"]
