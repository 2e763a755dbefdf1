"""The decision: facts about one spine MRI order in, a verdict with its reasons out.

Pure functions only (no I/O, no clock: `facts.as_of` is "today"). Read top to bottom, the
rules are checked in the order a clinician would: urgent red flags, a motor deficit to verify,
a fragility vertebral fracture, trauma, prior surgery, a failed trial of conservative care,
fracture and weaker risk factors, and last the "no red flags" verdicts. A rule whose first
study (radiographs or CT) is already in the record answers with the next step, MRI; an MRI of
the same region in the last 12 months turns a non-urgent indication into a repeat MRI. The
variant ids name entries in mappings/guidelines.yaml.

Where guidelines disagree the choice is made here, in a comment beside the rule.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from .model import (
    FROM_ORDER,
    IMAGING_SOURCES,
    RED_FLAG_SOURCES,
    SOURCE_LABELS,
    Evidence,
    Facts,
    MedicationCourse,
    PriorImaging,
    Verdict,
)

if TYPE_CHECKING:
    from .mappings import Mappings

# ----------------------------------------------------------------------------- parameters
# ACR LBP 2021 V1/V2, Choosing Wisely (AAFP, NASS, ACR): no imaging in the first 6 weeks.
ACUTE_WEEKS = 6
# ACR LBP 2021 V3: persistent symptoms "during or following 6 weeks of optimal medical management".
THERAPY_TRIAL_WEEKS = 6
# ACP/APS 2007: weaker cancer risk (age > 50, weight loss) -> radiographs after ~1 month.
ACP_TRIAL_WEEKS = 4
# Fever and inflammatory markers speak for a current infection only when recent.
RECENT_FINDING_DAYS = 28
# HEDIS LBP MY2025: trauma or fragility fracture in the 90 days before the episode counts.
TRAUMA_WINDOW_DAYS = 90
# HEDIS LBP / CMS166v7: >= 90 days of systemic corticosteroids within the last 366 days.
STEROID_DAYS = 90
STEROID_WINDOW_DAYS = 366
# HEDIS LBP: IV drug abuse in the 365 days before counts.
IVDU_WINDOW_DAYS = 365
# ACP/APS 2007 vertebral compression fracture risk: age > 65 (men) or > 75 (women).
FRACTURE_AGE = {"male": 65, "female": 75}
WEAKER_CANCER_AGE = 50
# A radiograph "of this episode" when the episode start is unknown: the last 26 weeks.
UNDATED_EPISODE_LOOKBACK_DAYS = 182
# Prior spine imaging is read for the last 12 months (issue 8; the card names each study).
PRIOR_IMAGING_DAYS = 365
# A motor deficit first recorded within ACP's subacute window (<= 12 weeks) is taken as new.
NEW_DEFICIT_DAYS = 12 * 7
# Canadian C-spine rule (Stiell 2001): age >= 65 is a high-risk factor after neck trauma.
CCR_AGE = 65

EPISODE_CONCEPTS = ("low_back_pain", "neck_pain", "thoracic_pain", "radiculopathy", "stenosis")
INFECTION_RISK_CONCEPTS = ("ivdu", "immunosuppression")
FRACTURE_RISK_CONCEPTS = ("osteoporosis_fracture", "long_term_steroids")
ANKYLOSED_SPINE_CONCEPTS = ("axial_spa", "dish")
# Every red flag the card reports as "checked" (found, found but not relevant, or absent).
CHECKED_RED_FLAGS = (
    "cauda_equina",
    "progressive_neuro_deficit",
    "possible_motor_deficit",
    "myelopathy",
    "spinal_cord_injury",
    "cancer",
    "cancer_history",
    "spinal_infection",
    "fever",
    "bacteremia_sepsis",
    "inflammatory_markers",
    "ivdu",
    "immunosuppression",
    "trauma",
    "recent_injury",
    "vertebral_fracture",
    "prior_spine_surgery",
    "osteoporosis_fracture",
    "long_term_steroids",
    "weight_loss",
    "axial_spa",
)
# Findings that speak for today's problem only when recent (days).
RECENCY_DAYS = {
    "fever": RECENT_FINDING_DAYS,
    "inflammatory_markers": RECENT_FINDING_DAYS,
    "bacteremia_sepsis": RECENT_FINDING_DAYS,
    "trauma": TRAUMA_WINDOW_DAYS,
    "recent_injury": TRAUMA_WINDOW_DAYS,
    "vertebral_fracture": TRAUMA_WINDOW_DAYS,
    "dangerous_mechanism": TRAUMA_WINDOW_DAYS,
    "possible_motor_deficit": NEW_DEFICIT_DAYS,
    "ivdu": IVDU_WINDOW_DAYS,
}
MODALITY_WORDS = {"radiograph": "radiographs", "ct": "CT", "mri": "MRI"}

# Guideline variant per rule and region. Thoracic spine has no ACR pain topic of its own:
# the lumbar variants apply by analogy and the verdict is marked extrapolated.
VARIANTS = {
    "cauda_equina": {"lumbar": "LBP-V4"},
    "progressive_neuro_deficit": {"lumbar": "LBP-V4", "cervical": "MYELO-V1", "thoracic": "TH-MYELO"},
    "myelopathy": {"lumbar": "MYELO-V1", "cervical": "MYELO-V1", "thoracic": "TH-MYELO"},
    "spinal_cord_injury": {"lumbar": "TRAUMA-TL", "cervical": "TRAUMA-C", "thoracic": "TRAUMA-TL"},
    "infection": {"lumbar": "LBP-V7", "cervical": "CN-V4", "thoracic": "TH-INFX"},
    "cancer": {"lumbar": "LBP-V7", "cervical": "CN-V5", "thoracic": "LBP-V7"},
    "trauma": {"lumbar": "TRAUMA-TL", "cervical": "TRAUMA-C", "thoracic": "TRAUMA-TL"},
    "vertebral_fracture": {"lumbar": "VCF-V1", "cervical": "VCF-V1", "thoracic": "VCF-V1"},
    "prior_surgery": {"lumbar": "LBP-V5", "cervical": "CN-V3", "thoracic": "LBP-V5"},
    "therapy_failed": {"lumbar": "LBP-V3", "thoracic": "LBP-V3"},
    "fracture_risk": {"lumbar": "LBP-V6", "cervical": "CN-V1", "thoracic": "TH-VCF"},
    "weaker_risk": {"lumbar": "LBP-ACP-DEFER", "cervical": "LBP-ACP-DEFER", "thoracic": "LBP-ACP-DEFER"},
    "acute": {"lumbar": "LBP-V1", "cervical": "CN-V1", "thoracic": "TH-NONSPECIFIC"},
    "no_therapy": {"lumbar": "LBP-V2", "cervical": "CN-V7", "thoracic": "TH-NONSPECIFIC"},
}
# Thoracic verdicts that rest on lumbar evidence by analogy (PAMA: no criteria apply).
EXTRAPOLATED_THORACIC = {
    "LBP-V3",
    "LBP-V5",
    "LBP-V6",
    "LBP-V7",
    "LBP-ACP-DEFER",
    "TH-NONSPECIFIC",
    "TH-VCF",
    "TRAUMA-TL",
}
RATING = {
    "indicated-urgent": "appropriate",
    "indicated-routine": "appropriate",
    # The guideline's first study is another one: ordering MRI first does not adhere.
    "radiographs-first": "not-appropriate",
    "low-value": "not-appropriate",
}
# ACP 2017 recommendations 1-2 (the reference's LBP-V1/V2 "suggest").
CONSERVATIVE_CARE_ADVICE = (
    "Conservative care first: heat, massage, acupuncture or spinal manipulation; an NSAID or "
    "skeletal muscle relaxant if needed; exercise or physical therapy if pain persists; "
    "reassess at 4-6 weeks (ACP 2017)."
)
REGION_WORDS = {"lumbar": "low back", "cervical": "neck", "thoracic": "thoracic back"}


# ----------------------------------------------------------------------------- helpers


def _weeks(since: date | None, as_of: date) -> float | None:
    return None if since is None else max((as_of - since).days, 0) / 7


def plural(count: int, word: str) -> str:
    """ "1 week", "3 weeks": the card never says "1 weeks"."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def format_weeks(weeks: float) -> str:
    """A duration in weeks in words: days under a week, else whole weeks."""
    if weeks < 1:
        return plural(round(weeks * 7), "day")
    return plural(round(weeks), "week")


def format_ago(when: date, as_of: date) -> str:
    """How long ago, in words: "today", "5 days ago", "3 weeks ago", "4 months ago"."""
    days = max((as_of - when).days, 0)
    if days == 0:
        return "today"
    if days < 7:
        return plural(days, "day") + " ago"
    if days < 8 * 7:
        return plural(round(days / 7), "week") + " ago"
    return plural(round(days / 30.44), "month") + " ago"


def study_words(study: PriorImaging, as_of: date) -> str:
    """ "lumbar MRI 3 months ago" """
    region = {"multi": "spine (several regions)", "unspecified": "spine"}.get(study.region, study.region)
    return f"{region} {MODALITY_WORDS.get(study.modality, study.modality)} {format_ago(study.date, as_of)}"


def _relevant(item: Evidence, region: str) -> bool:
    return item.region in ("any", region) or region in ("multi", "unspecified")


def _recent(item: Evidence, as_of: date, days: int) -> bool:
    # A fact from the order is current by definition; an undated record fact is not trusted as recent.
    if item.origin == FROM_ORDER:
        return True
    return item.date is not None and as_of - item.date <= timedelta(days=days)


def steroid_days(courses: list[MedicationCourse], as_of: date) -> int:
    """Days covered by systemic corticosteroid prescriptions within the last 366 days."""
    window_start = as_of - timedelta(days=STEROID_WINDOW_DAYS)
    covered: set[date] = set()
    for course in courses:
        if course.concept_id != "systemic_corticosteroid" or course.start is None or not course.days:
            continue
        for offset in range(min(course.days, STEROID_WINDOW_DAYS + 1)):
            day = course.start + timedelta(days=offset)
            if window_start <= day <= as_of:
                covered.add(day)
    return len(covered)


class _Context:
    """The facts read once, for the rules below."""

    def __init__(self, facts: Facts):
        if facts.order is None:
            raise ValueError("the rules rate one order: these facts name none")
        self.facts = facts
        self.as_of = facts.as_of
        self.region = facts.order.region
        self.rule_region = self.region if self.region in ("lumbar", "cervical", "thoracic") else "lumbar"
        self.flags: dict[str, list[Evidence]] = {}
        # In the record but not counted for this order, with why: the card must never call them absent.
        self.not_relevant: list[tuple[Evidence, str]] = list(facts.set_aside)
        for item in facts.findings:
            if _relevant(item, self.region):
                self.flags.setdefault(item.concept_id, []).append(item)
            else:
                self.not_relevant.append((item, f"a {item.region} finding; this order is for the {self.region} spine"))
        self._derive_flags()
        self.episode = [e for c in EPISODE_CONCEPTS for e in self.flags.get(c, [])]
        dated = [e.date for e in self.episode if e.date is not None]
        self.episode_start = min(dated) if dated else None
        self.episode_weeks = _weeks(self.episode_start, self.as_of)
        self.radicular = bool(self.flags.get("radiculopathy") or self.flags.get("stenosis"))
        self._therapy()
        self.missing = [
            f"{SOURCE_LABELS[k]}: {facts.unread_sources[k]}" for k in RED_FLAG_SOURCES if k in facts.unread_sources
        ]
        self.imaging_unread = [
            f"{SOURCE_LABELS[k]}: {facts.unread_sources[k]}" for k in IMAGING_SOURCES if k in facts.unread_sources
        ]

    def _derive_flags(self) -> None:
        facts, as_of = self.facts, self.as_of
        labels = facts.concept_labels
        # Recency windows: an old fever or an old injury says nothing about today's pain.
        for concept_id, days in RECENCY_DAYS.items():
            if concept_id not in self.flags:
                continue
            kept = [e for e in self.flags[concept_id] if _recent(e, as_of, days)]
            for item in self.flags[concept_id]:
                if item not in kept:
                    when = f"dated {item.date.isoformat()}" if item.date else "undated"
                    self.not_relevant.append((item, f"{when}: only the last {plural(days, 'day')} count"))
            if kept:
                self.flags[concept_id] = kept
            else:
                del self.flags[concept_id]
        days = steroid_days(facts.medications, as_of)
        if days >= STEROID_DAYS:
            courses = [c for c in facts.medications if c.concept_id == "systemic_corticosteroid"]
            self.flags.setdefault("long_term_steroids", []).append(
                Evidence(
                    "long_term_steroids",
                    labels.get("long_term_steroids", "Long-term systemic steroids"),
                    ", ".join(c.reference for c in courses),
                    "record",
                    f"{days} days of systemic corticosteroid in the last year ({courses[0].description})",
                )
            )
        for course in facts.medications:
            if course.concept_id == "immunosuppressant_medication":
                self.flags.setdefault("immunosuppression", []).append(
                    Evidence(
                        "immunosuppression",
                        labels.get("immunosuppression", "Immunosuppression"),
                        course.reference,
                        "record",
                        course.description,
                        course.start,
                    )
                )
        age, sex = facts.age, facts.sex
        if age is not None and sex in FRACTURE_AGE and age > FRACTURE_AGE[sex]:
            self.flags["age_fracture_risk"] = [
                Evidence(
                    "age_fracture_risk",
                    f"Age {age} ({sex}): vertebral fracture risk",
                    "Patient",
                    "record",
                    f"age {age}, {sex} (ACP threshold > {FRACTURE_AGE[sex]})",
                )
            ]
        if age is not None and age > WEAKER_CANCER_AGE:
            self.flags["age_over_50"] = [
                Evidence("age_over_50", f"Age {age} (> 50)", "Patient", "record", f"age {age}")
            ]

    def _therapy(self) -> None:
        facts = self.facts
        floor = (self.episode_start - timedelta(days=14)) if self.episode_start else (self.as_of - timedelta(days=365))
        items: list[tuple[date | None, str, str]] = [
            (p.date, p.description, p.reference) for p in facts.therapy_procedures
        ]
        items += [
            (c.start, c.description, c.reference) for c in facts.medications if c.concept_id == "analgesic_medication"
        ]
        items = [item for item in items if item[0] is None or item[0] >= floor]
        # One line per kind of therapy: "CPT 97110 Therapeutic exercise x 9, 2026-09-20 to 2026-11-15".
        grouped: dict[str, list[tuple[date | None, str]]] = {}
        for when, description, reference in items:
            grouped.setdefault(description, []).append((when, reference))
        self.therapy_descriptions = []
        for description, uses in grouped.items():
            dates = sorted(when for when, _ in uses if when is not None)
            span = (
                "undated"
                if not dates
                else dates[0].isoformat()
                if len(dates) == 1
                else f"{dates[0].isoformat()} to {dates[-1].isoformat()}"
            )
            count = f" x {len(uses)}" if len(uses) > 1 else ""
            self.therapy_descriptions.append(
                f"{description}{count}, {span} ({uses[0][1]}" + (", ..." if len(uses) > 1 else "") + ")"
            )
        dated = [when for when, _, _ in items if when is not None]
        self.therapy_undated = bool(items) and not dated
        self.therapy_weeks = _weeks(min(dated), self.as_of) if dated else None

    def has(self, *concept_ids: str) -> bool:
        return any(self.flags.get(c) for c in concept_ids)

    def evidence(self, *concept_ids: str) -> list[Evidence]:
        return [e for c in concept_ids for e in self.flags.get(c, [])]

    def prior_studies(self, modalities: tuple[str, ...], since: date | None = None) -> list[PriorImaging]:
        """Dated studies of this region (or several regions) in the window, oldest first.

        The window opens at `since` (default: the episode's start, else 26 weeks ago) and never
        reaches back more than 12 months.
        """
        start = since or self.episode_start or (self.as_of - timedelta(days=UNDATED_EPISODE_LOOKBACK_DAYS))
        start = max(start, self.as_of - timedelta(days=PRIOR_IMAGING_DAYS))
        found = [
            study
            for study in self.facts.prior_imaging
            if study.modality in modalities
            and (study.region in (self.region, "multi") or self.region == "multi")
            and start <= study.date <= self.as_of
        ]
        return sorted(found, key=lambda study: study.date)

    def variant(self, rule: str) -> str:
        return VARIANTS[rule].get(self.rule_region) or VARIANTS[rule]["lumbar"]


def _label_phrase(item: Evidence) -> str:
    return item.label + (" (stated on the order)" if item.origin == FROM_ORDER else "")


# ----------------------------------------------------------------------------- the rules


def decide(facts: Facts) -> Verdict:
    ctx = _Context(facts)
    verdict = _urgent(ctx) or (
        _motor_deficit_to_verify(ctx)
        or _vertebral_compression_fracture(ctx)
        or _trauma(ctx)
        or _prior_surgery(ctx)
        or _infection_risk(ctx)
        or _therapy_failed(ctx)
        or _cervical_radiculopathy(ctx)
        or _fracture_risk(ctx)
        or _weaker_risk(ctx)
        or _no_indication(ctx)
        or _no_red_flags(ctx)
    )
    verdict = _repeat_mri(ctx, verdict)
    # A red flag found is enough to call the MRI indicated; anything less needs every source.
    if not verdict.code.startswith("indicated-") and ctx.missing:
        verdict = _missing_data(ctx)
    return _finish(verdict, ctx)


def _urgent(ctx: _Context) -> Verdict | None:
    """Any urgent red flag -> MRI now (ACR V4/V7, CN-V4/V5, Myelopathy; ACP 2007 'immediate MRI')."""
    # Suspected infection: a diagnosed spinal infection, bacteremia, or a recent fever (ACP 2007
    # lists fever as a sign of infection on its own), or raised markers with a risk factor
    # (ACR Suspected Spine Infection 2021). Raised markers alone are too unspecific.
    infection = ctx.evidence("spinal_infection", "bacteremia_sepsis", "fever")
    if ctx.has("inflammatory_markers") and ctx.has(*INFECTION_RISK_CONCEPTS):
        infection += ctx.evidence("inflammatory_markers", *INFECTION_RISK_CONCEPTS)
    new_deficit, _ = _deficits_by_age(ctx)
    checks = [
        ("cauda_equina", ctx.evidence("cauda_equina"), "cauda_equina"),
        ("spinal_cord_injury", ctx.evidence("spinal_cord_injury"), "spinal_cord_injury"),
        ("myelopathy", ctx.evidence("myelopathy"), "myelopathy"),
        ("progressive_neuro_deficit", new_deficit, "progressive_neuro_deficit"),
        ("infection", infection, "infection"),
        # ACP 2007: history of cancer with new back pain -> immediate MRI; we treat active and
        # prior cancer alike (ACR V7 rates MRI usually appropriate for both).
        ("cancer", ctx.evidence("cancer", "cancer_history"), "cancer"),
    ]
    found = [(name, evidence, rule) for name, evidence, rule in checks if evidence]
    if not found:
        return None
    _name, evidence, rule = found[0]
    variant = ctx.variant(rule)
    all_evidence = [e for _, ev, _ in found for e in ev]
    verdict = Verdict(
        code="indicated-urgent",
        variant_id=variant,
        decisive_reason=_label_phrase(evidence[0]),
        reasons=[f"Urgent red flag: {_label_phrase(e)}: {e.description}" for e in all_evidence],
        # ACP/APS 2007 and NASS speak of low back pain: a cervical card cites only its ACR source.
        guideline_ids=[] if ctx.rule_region == "cervical" else ["ACP_APS_2007", "CW_NASS"],
        red_flags_found=all_evidence,
        would_change=[
            "If this red flag is not current (resolved, refuted or entered in error), "
            "update the record: the advice will be re-evaluated."
        ],
    )
    verdict.contrast_needed = any(rule in ("infection", "cancer") for _, _, rule in found)
    if ctx.region == "thoracic" and rule == "cancer":
        verdict.extrapolated = True
    return verdict


def _deficits_by_age(ctx: _Context) -> tuple[list[Evidence], list[Evidence]]:
    """Focal motor deficits split into new (on the order, or first recorded <= 12 weeks ago) and older or undated."""
    new: list[Evidence] = []
    old: list[Evidence] = []
    for item in ctx.evidence("progressive_neuro_deficit"):
        is_new = item.origin == FROM_ORDER or (
            item.date is not None and (ctx.as_of - item.date).days <= NEW_DEFICIT_DAYS
        )
        (new if is_new else old).append(item)
    return new, old


def _motor_deficit_to_verify(ctx: _Context) -> Verdict | None:
    """A motor deficit the code cannot date as new: MRI indicated, verify it is new or progressing.

    ACP 2007 / 2011: imaging for severe or progressive neurologic deficits; CW NASS names a focal
    neurologic deficit and progression as red flags; HEDIS counts R26.2 as neurologic impairment
    (imaging not low-value). A focal deficit recorded long ago or without a date, or a
    non-specific sign in this episode (gait disturbance R26, R29.898, SNOMED muscle weakness),
    cannot tell whether the deficit is new: the MRI is not discouraged, it is rated routine, and
    the card asks the clinician to examine and verify, since a new or progressing deficit makes
    it urgent.
    """
    _, old = _deficits_by_age(ctx)
    possible = ctx.evidence("possible_motor_deficit")
    evidence = old + possible
    if not evidence:
        return None
    first = evidence[0]
    when = f"recorded {first.date.isoformat()}" if first.date else "undated"
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("progressive_neuro_deficit"),
        decisive_reason=f"{_label_phrase(first).lower()} ({when}): verify it is new or progressing",
        reasons=[
            f"Motor deficit to verify: {_label_phrase(e)}: {e.description} ({e.reference}, "
            + (f"recorded {e.date.isoformat()}" if e.date else "undated")
            + ")"
            for e in evidence
        ]
        + [
            "The code alone cannot tell whether this deficit is new or progressing: examine strength, "
            "reflexes and sensation. A new or progressing deficit makes the MRI urgent (ACP 2007); a stable, "
            "known deficit does not by itself."
        ],
        guideline_ids=["ACP_APS_2007", "ACP_2011", "CW_NASS"],
        red_flags_found=evidence,
        would_change=[
            "A new or progressing motor deficit: MRI urgently. A deficit known to be old and stable, "
            "with no other red flag: the pain rules apply (often conservative care first)."
        ],
    )


def _vertebral_compression_fracture(ctx: _Context) -> Verdict | None:
    """A new fragility vertebral fracture: MRI is the next study (ACR Management of VCF 2018, V1).

    The fracture diagnosis says it was seen on radiographs or CT; ACR VCF Variant 1 (new
    symptomatic compression fracture identified on radiographs or CT, no known malignancy) rates
    MRI without contrast usually appropriate, to date the fracture, look for an underlying lesion
    and plan vertebral augmentation. It applies to fractures with osteoporosis, steroids or older
    age; a fracture from high-energy trauma in a younger patient stays with ACR Suspected Spine
    Trauma (CT first, _trauma). We follow ACR VCF here over ACP 2007's 'radiographs first',
    because the radiographs are what found the fracture.
    """
    fractures = ctx.evidence("vertebral_fracture")
    fragility = ctx.evidence(*FRACTURE_RISK_CONCEPTS, "age_fracture_risk")
    if not fractures or not fragility:
        return None
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("vertebral_fracture"),
        decisive_reason=f"new vertebral compression fracture with {_flag_words(fragility[0])}: MRI is the next study",
        reasons=[f"Recent vertebral fracture: {e.description} ({e.reference})" for e in fractures]
        + [f"Fragility: {_label_phrase(e)}: {e.description}" for e in fragility]
        + [
            "A fracture diagnosis means radiographs or CT found it: MRI without contrast is the next study "
            "(fracture age, underlying lesion, vertebral augmentation planning)."
        ],
        guideline_ids=["ACR_VCF_2018", "ACR_LBP_2021"],
        red_flags_found=fractures + [e for e in fragility if e not in fractures],
        would_change=[
            "A fracture from high-energy trauma in a younger patient: CT first (ACR Suspected Spine "
            "Trauma). Known malignancy or a neurological deficit: MRI urgently."
        ],
    )


def _missing_data(ctx: _Context) -> Verdict:
    """Without every red-flag source, only a red flag found can rate the order."""
    return Verdict(
        code="insufficient-information",
        variant_id=None,
        decisive_reason="patient data not available: " + ", ".join(m.split(" (")[0] for m in ctx.missing),
        reasons=[
            "No urgent red flag was found in the data that could be read, but 'no red flags' "
            "cannot be asserted without: " + "; ".join(ctx.missing) + "."
        ],
        missing=ctx.missing,
        would_change=[
            "Send the missing data in the hook's prefetch (or allow the service to read the "
            "EHR's FHIR server): the order will then be rated."
        ],
    )


def _first_study_done(
    ctx: _Context,
    verdict: Verdict,
    subject: str,
    modalities: tuple[str, ...] = ("radiograph", "ct"),
    since: date | None = None,
) -> Verdict:
    """A radiographs-first verdict whose first study is already in the record: MRI is the next step.

    ACP 2007: MRI if radiographs are negative but suspicion remains; ACR LBP V6 and CN-V8 rate
    MRI without contrast usually appropriate once plain films have been done; ACR Suspected
    Spine Trauma: MRI after CT for suspected ligamentous or cord injury or an ankylosed spine.
    """
    done = ctx.prior_studies(modalities, since)
    if not done:
        if ctx.imaging_unread:
            verdict.reasons.append(
                "Prior imaging could not be read ("
                + "; ".join(ctx.imaging_unread)
                + "): if radiographs or CT were already done, MRI may be the next step."
            )
        return verdict
    study = done[-1]
    words = study_words(study, ctx.as_of)
    first = "CT" if verdict.suggest_first_study == "ct" else "radiographs"
    verdict.code = "indicated-routine"
    verdict.suggest_cancel = False
    verdict.suggest_first_study = None
    verdict.decisive_reason = f"{subject}; {words}: MRI is the next study"
    verdict.reasons.append(
        f"The first study ({first}) is done: {study.description} ({study.reference}, "
        f"{study.date.isoformat()}, {words}). MRI is the next step if it did not explain the symptoms."
    )
    verdict.would_change = ["If the earlier study already explains the symptoms, MRI adds little."]
    return verdict


def _trauma_high_risk(ctx: _Context) -> list[Evidence]:
    """What makes imaging indicated after an injury without a known fracture.

    Canadian C-spine rule (Stiell 2001), neck only: age >= 65, a dangerous mechanism,
    paresthesias in the extremities. Any region: an ankylosed spine (ankylosing spondylitis,
    DISH), which ACR Suspected Spine Trauma images with CT and then MRI. Thoracolumbar injuries
    in older patients are ACR LBP V6's 'low-velocity trauma, elderly' (see _fracture_risk).
    """
    risk = ctx.evidence(*ANKYLOSED_SPINE_CONCEPTS, "dangerous_mechanism")
    if ctx.rule_region == "cervical":
        risk += ctx.evidence("paresthesia")
        age = ctx.facts.age
        if age is not None and age >= CCR_AGE:
            risk.append(
                Evidence(
                    "age_trauma_risk",
                    f"age {age} (>= {CCR_AGE})",
                    "Patient",
                    "record",
                    f"age {age}: Canadian C-spine rule high-risk factor",
                )
            )
    return risk


def _trauma(ctx: _Context) -> Verdict | None:
    """Recent spinal trauma without deficit: CT first, not MRI (ACR Suspected Spine Trauma).

    A known fracture, or an injury with a high-risk factor, needs imaging and CT is the first
    study; once CT (or radiographs) of the region is done after the injury, MRI is the next
    study for suspected ligamentous or cord injury. An injury without a high-risk factor is left
    to the other rules: sprain and strain codes alone are not red flags (reference note), and
    for the neck the Canadian C-spine rule says no imaging (see _no_red_flags).
    """
    fracture = ctx.evidence("trauma")
    injury = ctx.evidence("recent_injury")
    if not fracture and not injury:
        return None
    risk = _trauma_high_risk(ctx)
    injury_dates = [e.date for e in fracture + injury if e.date is not None]
    since = min(injury_dates) if injury_dates else None
    evidence = fracture + [e for e in injury if e not in fracture] + risk
    if not fracture and not risk:
        # Low risk: imaging only if a study was done anyway and MRI is its next step.
        done = ctx.prior_studies(("radiograph", "ct"), since)
        if not done:
            return None
    what = (
        f"recent spinal fracture ({fracture[0].description.split(' ', 2)[-1]})"
        if fracture
        else f"recent injury with {_flag_words(risk[0])}"
        if risk
        else "recent injury"
    )
    verdict = Verdict(
        code="radiographs-first",
        variant_id=ctx.variant("trauma"),
        decisive_reason=f"{what}, no neurological deficit",
        reasons=[f"Recent trauma: {e.description} ({e.reference})" for e in fracture + injury]
        + [f"High-risk factor: {_label_phrase(e)}: {e.description}" for e in risk]
        + [
            "No cord injury or neurological deficit is documented: CT is the first study for a fracture; MRI is "
            "for suspected cord or ligament injury."
        ],
        guideline_ids=["ACR_TRAUMA"] + (["CCR_2001"] if ctx.rule_region == "cervical" and not fracture else []),
        red_flags_found=evidence,
        suggest_cancel=True,
        suggest_first_study="ct",
        would_change=[
            "A neurological deficit or suspected cord/ligament injury makes MRI the study of choice; "
            "after a negative CT, MRI is the next study when that suspicion remains."
        ],
    )
    return _first_study_done(ctx, verdict, what, since=since)


def _prior_surgery(ctx: _Context) -> Verdict | None:
    """Prior spine surgery with new symptoms: lumbar MRI indicated (ACR LBP V5); cervical radiographs first (CN-V3)."""
    if not ctx.has("prior_spine_surgery"):
        return None
    evidence = ctx.evidence("prior_spine_surgery")
    verdict = Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("prior_surgery"),
        decisive_reason="prior spine surgery with new symptoms",
        red_flags_found=evidence,
        reasons=[f"Prior spine surgery: {e.description} ({e.reference})" for e in evidence],
        guideline_ids=["OP8", "HEDIS_LBP_MY2025"],
        would_change=["If symptoms are unchanged from before surgery, imaging may not change management."],
    )
    if ctx.rule_region == "cervical":
        verdict.code = "radiographs-first"
        verdict.decisive_reason = "prior cervical spine surgery: radiographs or CT come first"
        verdict.suggest_cancel = True
        verdict.suggest_first_study = "radiograph"
        verdict.would_change = ["Radiographs/CT done and inconclusive, or myelopathy/deficit, make MRI appropriate."]
        return _first_study_done(ctx, verdict, "prior cervical spine surgery")
    return verdict


def _infection_risk(ctx: _Context) -> Verdict | None:
    """Immunosuppression or injection drug use with back or neck pain: MRI usually appropriate
    (ACR LBP V7, ACR Suspected Spine Infection 2021)."""
    if not ctx.has(*INFECTION_RISK_CONCEPTS):
        return None
    evidence = ctx.evidence(*INFECTION_RISK_CONCEPTS)
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("infection"),
        decisive_reason=f"{_label_phrase(evidence[0]).lower()}: risk of spinal infection",
        reasons=[f"Infection risk factor: {_label_phrase(e)}: {e.description} ({e.reference})" for e in evidence],
        guideline_ids=["ACR_INFX_2021", "CW_NASS"],
        red_flags_found=evidence,
        would_change=["Fever or raised ESR/CRP would make this urgent (MRI with and without contrast)."],
    )


def _therapy_failed(ctx: _Context) -> Verdict | None:
    """ACR LBP V3: radiculopathy or stenosis persisting after >= 6 weeks of conservative therapy.

    ACR V3 says "+/- radiculopathy" for surgery or intervention candidates; we require
    radiculopathy or stenosis because axial pain alone rarely makes a surgical candidate
    (ACP 2007, NICE NG59 1.1.6). The override reason "surgical or interventional candidate"
    covers the exception.
    """
    if ctx.rule_region == "cervical" or not ctx.radicular:
        return None
    if ctx.therapy_undated:
        return Verdict(
            code="insufficient-information",
            variant_id=None,
            decisive_reason="conservative therapy is documented without dates",
            reasons=[
                "Radiculopathy/stenosis with conservative therapy whose dates are missing: "
                "whether 6 weeks of therapy have failed cannot be told."
            ],
            not_documented=["dates of the conservative therapy (Procedure.performed, MedicationRequest.authoredOn)"],
            would_change=["Therapy dated >= 6 weeks ago: MRI indicated. Under 6 weeks: MRI is low-value."],
        )
    if ctx.therapy_weeks is None or ctx.therapy_weeks < THERAPY_TRIAL_WEEKS:
        return None
    kind = "radiculopathy" if ctx.flags.get("radiculopathy") else "spinal stenosis"
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("therapy_failed"),
        decisive_reason=f"{kind} persisting after {format_weeks(ctx.therapy_weeks)} of conservative therapy",
        reasons=[
            f"{kind.capitalize()} documented and conservative therapy started {format_weeks(ctx.therapy_weeks)} ago "
            f"(>= {THERAPY_TRIAL_WEEKS} weeks)."
        ],
        guideline_ids=["ACP_APS_2007", "NOR_2010"],
        would_change=[
            "If symptoms are improving, or the patient is not a candidate for surgery or "
            "epidural injection, MRI will not change management (ACP 2007)."
        ],
    )


def _cervical_radiculopathy(ctx: _Context) -> Verdict | None:
    """ACR Cervical Neck Pain CN-V2: radiculopathy persisting >= 6 weeks -> MRI without contrast.

    The 2018 criteria rate MRI usually appropriate for any new radiculopathy; the 2024 update
    rates it only 'may be appropriate' when acute. We follow 2024: defer under 6 weeks.
    """
    if ctx.rule_region != "cervical" or not ctx.radicular:
        return None
    weeks = ctx.episode_weeks
    if weeks is None:
        return Verdict(
            code="insufficient-information",
            variant_id=None,
            decisive_reason="cervical radiculopathy of unknown duration",
            reasons=["Cervical radiculopathy is documented without an onset or recorded date."],
            not_documented=["onset date of the radiculopathy (Condition.onsetDateTime)"],
            would_change=["Onset >= 6 weeks ago: MRI indicated. Under 6 weeks without deficit: defer MRI."],
        )
    if weeks >= ACUTE_WEEKS:
        return Verdict(
            code="indicated-routine",
            variant_id="CN-V2",
            decisive_reason=f"cervical radiculopathy persisting {format_weeks(weeks)}",
            reasons=[f"Cervical radiculopathy for {format_weeks(weeks)} (>= {ACUTE_WEEKS} weeks)."],
            guideline_ids=["ACR_CNECK_2024", "NOR_2010"],
            would_change=["If symptoms are resolving, MRI will not change management."],
        )
    return Verdict(
        code="low-value",
        variant_id="CN-V2",
        decisive_reason=f"cervical radiculopathy for {format_weeks(weeks)} without deficit: most resolve",
        reasons=[f"Acute cervical radiculopathy ({format_weeks(weeks)}), no red flag, no motor deficit."],
        guideline_ids=["ACR_CNECK_2024", "NOR_2010"],
        suggest_cancel=True,
        would_change=["Persistence beyond 6 weeks, a motor deficit or myelopathic signs make MRI appropriate."],
    )


def _flag_words(item: Evidence) -> str:
    """A finding as the summary names it ("osteoporosis or fragility fracture", "Age 72 (male)...")."""
    return item.label if item.concept_id.startswith("age_") else _label_phrase(item).lower()


def _radiographs_first(
    ctx: _Context,
    rule: str,
    evidence: list[Evidence],
    why: str,
    kind: str,
    would_change: str,
    modalities: tuple[str, ...] = ("radiograph", "ct"),
    guideline_ids: tuple[str, ...] = ("ACP_APS_2007", "CW_NASS"),
) -> Verdict:
    verdict = Verdict(
        code="radiographs-first",
        variant_id=ctx.variant(rule),
        decisive_reason=_flag_words(evidence[0]) + why,
        reasons=[f"{kind}: {_label_phrase(e)}: {e.description}" for e in evidence],
        guideline_ids=list(guideline_ids),
        red_flags_found=evidence,
        suggest_cancel=True,
        suggest_first_study="radiograph",
        would_change=[would_change],
    )
    return _first_study_done(ctx, verdict, _flag_words(evidence[0]), modalities)


def _fracture_risk(ctx: _Context) -> Verdict | None:
    """Osteoporosis, long-term steroids, older age or low-velocity trauma in the elderly, no deficit:
    radiographs first (ACR LBP V6, ACP 2007).

    ACR LBP V6 names 'low-velocity trauma, osteoporosis, elderly individual, chronic steroid use':
    a recent thoracic or lumbar injury counts when the patient is >= 65 (the age the Canadian
    C-spine rule uses; V6 gives no number). In younger patients a sprain or strain code alone is
    how acute back pain is often coded, not a red flag (reference note).
    """
    evidence = ctx.evidence(*FRACTURE_RISK_CONCEPTS, "age_fracture_risk")
    age = ctx.facts.age
    if ctx.rule_region != "cervical" and age is not None and age >= CCR_AGE and ctx.has("recent_injury"):
        evidence += ctx.evidence("recent_injury")
    if not evidence:
        return None
    return _radiographs_first(
        ctx,
        "fracture_risk",
        evidence,
        ", no neurological deficit (compression fracture?)",
        "Vertebral fracture risk",
        "A neurological deficit, or radiographs done and inconclusive, make MRI appropriate "
        "(ACR LBP V6 rates MRI without contrast usually appropriate after radiographs).",
    )


def _weaker_risk(ctx: _Context) -> Verdict | None:
    """ACP 2007: weight loss, age > 50 (after ~1 month), axial spondyloarthritis or raised ESR/CRP
    -> radiographs (+ ESR) first; MRI once radiographs are done and the suspicion remains.

    Raised markers without an infection risk factor are a weaker suspicion of cancer or
    infection: ACP 2007 pairs radiographs with ESR, and a raised ESR after negative radiographs
    is what keeps the suspicion (the 'image if plain film positive or ESR raised' strategy of
    Joines 2001, cited by ACP 2007). With an infection risk factor they are urgent (_urgent).
    """
    evidence = ctx.evidence("weight_loss", "axial_spa", "inflammatory_markers")
    if ctx.has("age_over_50") and ctx.episode_weeks is not None and ctx.episode_weeks >= ACP_TRIAL_WEEKS:
        evidence += ctx.evidence("age_over_50")
    if not evidence:
        return None
    return _radiographs_first(
        ctx,
        "weaker_risk",
        evidence,
        ": radiographs and ESR first",
        "Weaker risk factor",
        "Radiographs or ESR abnormal, or high suspicion after negative radiographs, make MRI appropriate.",
        guideline_ids=("ACP_APS_2007", "ACP_2011", "CW_NASS"),
    )


def _no_indication(ctx: _Context) -> Verdict | None:
    if ctx.episode:
        return None
    words = REGION_WORDS.get(ctx.region, "spine")
    # Pain or radiculopathy of another region (e.g. a lumbar reason on a cervical order) is read,
    # not missing: say so, since the order's region may be the mistake.
    elsewhere = [e for e in ctx.facts.findings if e.concept_id in EPISODE_CONCEPTS and not _relevant(e, ctx.region)]
    if elsewhere:
        other = elsewhere[0]
        where = "the order's reason" if other.origin == FROM_ORDER else "the record"
        return Verdict(
            code="insufficient-information",
            variant_id=None,
            decisive_reason=f"{where} names {other.label.lower()} of another region, not {words} pain",
            reasons=[
                f"{where.capitalize()} names {other.label.lower()} ({other.description}, {other.reference}), "
                f"which is not an indication for MRI of the {ctx.region} spine; nothing names {words} "
                "pain, radiculopathy, stenosis or a red flag."
            ],
            not_documented=[f"an indication for MRI of the {ctx.region} spine"],
            would_change=[
                f"If the study meant is of the {other.region} spine, change the order; otherwise add "
                f"the {words} indication to the order's reason or the problem list."
            ],
        )
    return Verdict(
        code="insufficient-information",
        variant_id=None,
        decisive_reason=f"no {words} pain, radiculopathy or red flag documented",
        reasons=[
            f"Neither the order's reason nor the record names {words} pain, radiculopathy, stenosis or a red flag."
        ],
        not_documented=["the indication for the MRI (order reasonCode or an active Condition)"],
        would_change=["Add the indication to the order (reason) or the problem list."],
    )


def _no_red_flags(ctx: _Context) -> Verdict:
    """No red flags: low-value within 6 weeks (V1) and after 6 weeks without a trial of therapy (V2)."""
    weeks = ctx.episode_weeks
    words = REGION_WORDS.get(ctx.region, "spine")
    if ctx.rule_region == "cervical" and weeks is not None and weeks >= ACUTE_WEEKS:
        # CN-V7: chronic neck pain -> radiographs are the first study; CN-V8 once they are done.
        verdict = Verdict(
            code="radiographs-first",
            variant_id="CN-V7",
            decisive_reason=f"neck pain for {format_weeks(weeks)}: radiographs are the first study",
            reasons=[f"Chronic neck pain ({format_weeks(weeks)}) without red flags or radiculopathy."],
            guideline_ids=["ACR_CNECK_2018", "NOR_2010"],
            suggest_cancel=True,
            suggest_first_study="radiograph",
            would_change=[
                "Radiographs done (CN-V8: MRI if degenerative changes with neurological signs), "
                "radiculopathy or myelopathic signs."
            ],
        )
        return _first_study_done(ctx, verdict, f"neck pain for {format_weeks(weeks)}", modalities=("radiograph",))
    if weeks is not None and weeks >= ACUTE_WEEKS:
        if ctx.therapy_weeks is not None and ctx.therapy_weeks >= THERAPY_TRIAL_WEEKS:
            reason = f"axial {words} pain after {format_weeks(ctx.therapy_weeks)} of therapy, no radiculopathy"
            variant, guidelines = ctx.variant("no_therapy"), ["ACP_APS_2007", "NICE_NG59"]
        else:
            reason = f"{words} pain for {format_weeks(weeks)} without a trial of conservative therapy"
            variant, guidelines = ctx.variant("no_therapy"), ["OP8", "NICE_NG59"]
    elif ctx.rule_region == "cervical" and ctx.has("recent_injury"):
        # ACR Suspected Spine Trauma V1: low risk by the Canadian C-spine rule -> no imaging.
        reason = "neck injury without a Canadian C-spine rule high-risk factor: imaging not indicated"
        variant, guidelines = "TRAUMA-C-LOW", ["ACR_TRAUMA", "CCR_2001"]
    else:
        span = f"for {format_weeks(weeks)}" if weeks is not None else "(duration not documented)"
        reason = f"{words} pain {span}, no red flags"
        variant = ctx.variant("acute")
        guidelines = ["ACP_APS_2007", "ACP_2011", "CW_AAFP", "CW_NASS", "CW_ACR", "NICE_NG59"]
    return Verdict(
        code="low-value",
        variant_id=variant,
        decisive_reason=reason,
        reasons=[
            "No red flag documented and no failed trial of >= 6 weeks of conservative therapy"
            + (" with radiculopathy." if ctx.rule_region != "cervical" else ".")
        ]
        + (
            []
            if weeks is not None
            else [
                "The episode has no onset date: under 6 weeks (ACR V1) and over "
                "6 weeks without therapy (ACR V2) both rate MRI usually not appropriate."
            ]
        ),
        guideline_ids=guidelines,
        suggest_cancel=True,
        advice=CONSERVATIVE_CARE_ADVICE,
        would_change=(
            [
                "A Canadian C-spine rule high-risk factor (age >= 65, dangerous mechanism, paresthesias in the "
                "extremities) or inability to rotate the neck 45 degrees: CT of the cervical spine first."
            ]
            if variant == "TRAUMA-C-LOW"
            else []
        )
        + [
            "A red flag: new urinary retention, saddle anaesthesia, progressive weakness, fever, "
            "cancer history, immunosuppression, injection drug use, osteoporosis or steroid use.",
            "Radiculopathy persisting after >= 6 weeks of documented conservative therapy in a "
            "candidate for surgery or epidural injection.",
        ],
    )


def _repeat_mri(ctx: _Context, verdict: Verdict) -> Verdict:
    """An MRI of this region in the last 12 months: a repeat needs something new since.

    The ACR Appropriateness Criteria rate initial imaging (every LBP variant says 'Initial
    imaging'; V5 asks for new or progressing symptoms); ACP 2011 reserves imaging for severe or
    progressive deficits and suspected serious disease. So an urgent red flag keeps its verdict
    (the card names the earlier MRI); otherwise, when a symptom or finding was recorded after
    that MRI, the order is rated as a new problem, and when nothing was, the repeat MRI is
    low-value. The code cannot
    know whether symptoms changed: the card says so and the override covers it.
    """
    mris = ctx.prior_studies(("mri",), since=ctx.as_of - timedelta(days=PRIOR_IMAGING_DAYS))
    if not mris:
        return verdict
    latest = mris[-1]
    words = study_words(latest, ctx.as_of)
    verdict.reasons.append(
        f"Prior MRI of this region: {latest.description} ({latest.reference}, {latest.date.isoformat()}: {words})."
    )
    if verdict.code in ("indicated-urgent", "insufficient-information"):
        return verdict
    since_mri = [
        (e, e.date)
        for e in verdict.red_flags_found + ctx.episode
        if e.origin != FROM_ORDER and e.date is not None and e.date > latest.date
    ]
    if since_mri:
        # Something recorded after the MRI: a new problem, rated as if first seen.
        new, when = since_mri[0]
        verdict.reasons.append(f"New since that MRI: {_label_phrase(new)} ({when.isoformat()}).")
        return verdict
    return Verdict(
        code="low-value",
        variant_id="REPEAT-MRI",
        decisive_reason=f"repeat MRI: {words}, nothing new documented since",
        reasons=[
            *verdict.reasons,
            f"No red flag and no finding recorded after the MRI of {latest.date.isoformat()}: a repeat MRI is "
            "indicated only for new or progressing symptoms or a new red flag.",
        ],
        guideline_ids=["ACP_2011", "ACR_LBP_2021"],
        red_flags_found=verdict.red_flags_found,
        suggest_cancel=True,
        advice="Review the MRI of " + latest.date.isoformat() + " (" + latest.reference + ") before repeating it.",
        would_change=[
            "New or progressing symptoms or a new red flag since that MRI: the repeat is then indicated "
            "(record the change, or override with 'red flag present, not yet documented')."
        ],
    )


def _finish(verdict: Verdict, ctx: _Context) -> Verdict:
    """Fill what every verdict reports: flags checked, episode, therapy, prior imaging, rating."""
    found_ids = {e.concept_id for e in verdict.red_flags_found}
    for concept_id in CHECKED_RED_FLAGS:
        if concept_id in ctx.flags and concept_id not in found_ids:
            verdict.red_flags_found.extend(ctx.flags[concept_id])
            found_ids.add(concept_id)
    # What the record holds but this order does not count is said as such, never "not found".
    verdict.red_flags_not_relevant = [
        (item, why)
        for item, why in ctx.not_relevant
        if item.concept_id in CHECKED_RED_FLAGS and item.concept_id not in found_ids
    ]
    present_ids = found_ids | {item.concept_id for item, _ in verdict.red_flags_not_relevant}
    labels = ctx.facts.concept_labels
    if not ctx.missing:
        verdict.red_flags_absent = [labels.get(c, c) for c in CHECKED_RED_FLAGS if c not in present_ids]
    verdict.prior_imaging = [
        f"{study_words(study, ctx.as_of)}: {study.description} ({study.reference}, {study.date.isoformat()})"
        for study in ctx.prior_studies(
            ("radiograph", "ct", "mri"), since=ctx.as_of - timedelta(days=PRIOR_IMAGING_DAYS)
        )
    ]
    verdict.episode_weeks = ctx.episode_weeks
    verdict.episode_evidence = ctx.episode
    verdict.therapy_weeks = ctx.therapy_weeks
    verdict.therapy_evidence = ctx.therapy_descriptions
    if not verdict.missing:
        verdict.missing = ctx.missing
    verdict.skipped = list(ctx.facts.skipped)
    variant = verdict.variant_id or ""
    if ctx.region == "thoracic" and variant in EXTRAPOLATED_THORACIC:
        verdict.extrapolated = True
    if verdict.code in RATING:
        verdict.pama_rating = "no-criteria-apply" if verdict.extrapolated else RATING[verdict.code]
    if verdict.code in ("low-value", "radiographs-first"):
        verdict.suggest_cancel = True
    return verdict


# ----------------------------------------------------------------------------- what the rules need

# Concept ids and guideline variants these rules read by name. A mappings folder without them
# would let the service start and silently never find that flag: `knowledge_gaps` stops it.
READ_CONCEPTS = (
    EPISODE_CONCEPTS
    + CHECKED_RED_FLAGS
    + ANKYLOSED_SPINE_CONCEPTS
    + (
        "paresthesia",
        "dangerous_mechanism",
        "systemic_corticosteroid",
        "immunosuppressant_medication",
        "analgesic_medication",
    )
)
# Concepts read by their kind rather than by name: every therapy concept is a trial of care (_therapy).
READ_KINDS = ("therapy",)
NAMED_VARIANTS = ("CN-V2", "CN-V7", "TRAUMA-C-LOW", "REPEAT-MRI")
CITED_GUIDELINES = (
    "ACP_2011",
    "ACP_APS_2007",
    "ACR_CNECK_2018",
    "ACR_CNECK_2024",
    "ACR_INFX_2021",
    "ACR_LBP_2021",
    "ACR_TRAUMA",
    "ACR_VCF_2018",
    "CCR_2001",
    "CW_AAFP",
    "CW_ACR",
    "CW_NASS",
    "HEDIS_LBP_MY2025",
    "NICE_NG59",
    "NOR_2010",
    "OP8",
)


def knowledge_gaps(mappings: Mappings) -> list[str]:
    """What these rules read by name that the mappings do not define (empty when they fit)."""
    gaps = [f"concept '{c}'" for c in dict.fromkeys(READ_CONCEPTS) if c not in mappings.concepts]
    variants = {v for by_region in VARIANTS.values() for v in by_region.values()} | set(NAMED_VARIANTS)
    for variant_id in sorted(variants):
        try:
            mappings.variant(variant_id)
        except KeyError:
            gaps.append(f"guideline variant '{variant_id}'")
    gaps += [f"guideline '{g}'" for g in CITED_GUIDELINES if g not in mappings.guidelines]
    return gaps
