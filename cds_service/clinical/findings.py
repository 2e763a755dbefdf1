"""Which of the record's facts count for this order, on this day: the rules read only this.

A fact counts when it is of the order's region (or of no region), and:
- a chronic state on the problem list (cancer, injection drug use or opioid use disorder,
  immunosuppression, an ankylosed spine, osteoporosis, prior spine surgery, demyelinating disease)
  counts while it is active, whatever its date: a problem list is not re-entered every year;
- an episodic finding (fever, raised markers, an injury, a fracture, a neuraxial procedure)
  counts within its look-back window, measured from its onset (or, resolved, from its end);
  an entry dated only by the day it was written counts when that day is in the window;
- a resolved entry counts within its window from the day it ended, and never when it has no end
  date (it is history).
What does not count is kept, with why, for the card's "confirm" line and the evidence page: the
card never calls a finding in the record "not found", nor "not relevant".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date, timedelta

from .model import (
    FROM_ORDER,
    FROM_RECORD,
    IMAGING_SOURCES,
    RED_FLAG_SOURCES,
    SOURCE_LABELS,
    Evidence,
    Facts,
    MedicationCourse,
    PriorImaging,
)
from .wording import finding_name, format_ago, lower_first, plural

# ----------------------------------------------------------------------------- windows (days)
# ACP/APS 2007 counts fever as a sign of infection; a fever or raised ESR/CRP/WBC speaks for a
# current infection only when recent. The reference verified no guideline window: 28 days, the
# HEDIS LBP episode window, is our choice.
RECENT_FINDING_DAYS = 28
# HEDIS LBP MY2025: trauma or fragility fracture in the 90 days before the episode counts.
TRAUMA_WINDOW_DAYS = 90
# ASRA (Horlocker 2018): a spinal or epidural haematoma after neuraxial block presents within
# days; an epidural abscess within days to weeks. 14 days is our window for "new pain or a new
# deficit after the procedure".
POST_PROCEDURE_DAYS = 14
# A pregnancy entry older than a term (40 weeks) is not this pregnancy: 300 days.
PREGNANCY_DAYS = 300
# OP-8 and HEDIS: cancer, IV drug use, immune deficiency within 365 days; a resolved chronic
# state counts for a year after it ended.
RESOLVED_DAYS = 365
# HEDIS LBP / CMS166v7: >= 90 days of systemic corticosteroids within the last 366 days.
STEROID_DAYS = 90
STEROID_WINDOW_DAYS = 366
# ACP/APS 2007 vertebral compression fracture risk: age > 65 (men) or > 75 (women).
FRACTURE_AGE = {"male": 65, "female": 75}
# ACP/APS 2007 weaker cancer risk: age > 50.
WEAKER_CANCER_AGE = 50
# ACR Appropriateness Criteria Back Pain-Child: under 18, a child's red flags and first studies.
CHILD_AGE = 18
# A finding recorded within ACP's subacute window (<= 12 weeks) is new (Findings.is_new): a
# deficit, a bladder symptom, a myelopathy, a cord symptom.
NEW_DEFICIT_DAYS = 12 * 7
# A radiograph "of this episode" when the episode start is unknown: the last 26 weeks.
UNDATED_EPISODE_LOOKBACK_DAYS = 182
# Prior spine imaging is read for the last 12 months (the card names each study).
PRIOR_IMAGING_DAYS = 365
# A cancer or injection drug use entry written down this long ago: the card asks whether it is
# still so (a past operation, MS or osteoporosis does not stop being current: never asked).
CONFIRM_CURRENT_DAYS = 365

EPISODE_CONCEPTS = ("low_back_pain", "neck_pain", "thoracic_pain", "radiculopathy", "stenosis")
EPISODIC_DAYS = {
    "fever": RECENT_FINDING_DAYS,
    "inflammatory_markers": RECENT_FINDING_DAYS,
    "bacteremia_sepsis": RECENT_FINDING_DAYS,
    "trauma": TRAUMA_WINDOW_DAYS,
    "recent_injury": TRAUMA_WINDOW_DAYS,
    "vertebral_fracture": TRAUMA_WINDOW_DAYS,
    "dangerous_mechanism": TRAUMA_WINDOW_DAYS,
    "neuraxial_procedure": POST_PROCEDURE_DAYS,
    "pregnancy": PREGNANCY_DAYS,
}
# Resolved, these still speak for today's risk within a year of their end (OP-8, HEDIS); any
# other resolved diagnosis (a treated spinal infection, an old deficit) is history.
RESOLVED_RISKS = ("ivdu", "immunosuppression")
# A focal motor deficit (foot drop, monoplegia, paresis): new, it is urgent. The possible ones
# (a gait disturbance, "weakness" that may be pain or frailty) are never urgent by themselves:
# the card asks to examine.
FOCAL_DEFICIT_CONCEPTS = ("progressive_neuro_deficit",)
POSSIBLE_DEFICIT_CONCEPTS = ("possible_motor_deficit",)
# Results seen but not used: not counted, and not silent either (set aside by facts.py with why).
UNJUDGED_BECAUSE = ("preliminary", "registered", "unit ")

# What a result the service could not judge would change (Findings._doubts).
UNJUDGED_QUESTION = {
    "fever": "confirm it: a fever makes the MRI urgent",
    "inflammatory_markers": "confirm it: a raised ESR or CRP with a risk factor makes the MRI urgent",
}
NUMBNESS_QUESTION = {
    "lumbar": "Saddle numbness, or new bladder or bowel symptoms: MRI now",
    "cervical": "Both arms or legs, or clumsy hands: MRI urgently (cord compression?)",
    "thoracic": "A sensory level on the trunk, or both legs: MRI urgently (cord compression?)",
}
FUSION_QUESTION = {
    "lumbar": "was it a spinal fusion? If so, MRI is indicated (ACR LBP Variant 5)",
    "cervical": "was it a cervical fusion? If so, radiographs or CT first (ACR Cervical Neck Pain Variant 3)",
    "thoracic": "was it a spinal fusion? If so, MRI is indicated",
}
# What to ask of an old entry that may have ended (Findings._ask_if_old).
STILL_SO = {"cancer": "still active, or treated?", "ivdu": "still injecting?"}

# Guideline variant per rule and region. Thoracic spine has no ACR pain topic of its own:
# the lumbar variants apply by analogy and the verdict is marked extrapolated.
VARIANTS = {
    # Bladder, bowel or saddle symptoms: cauda equina on a lumbar order, cord compression above it.
    "cauda_equina": {"lumbar": "LBP-V4", "cervical": "MYELO-V1", "thoracic": "TH-MYELO"},
    # A new motor deficit with neck or thoracic pain: the cord first (ACR Myelopathy).
    "motor_deficit": {"lumbar": "ACP-DEFICIT", "cervical": "MYELO-V1", "thoracic": "TH-MYELO"},
    "myelopathy": {"lumbar": "MYELO-V1", "cervical": "MYELO-V1", "thoracic": "TH-MYELO"},
    "spinal_cord_injury": {"lumbar": "TRAUMA-TL", "cervical": "TRAUMA-C", "thoracic": "TRAUMA-TL"},
    "infection": {"lumbar": "LBP-V7", "cervical": "CN-V4", "thoracic": "TH-INFX"},
    "epidural_abscess": {"lumbar": "TH-INFX", "cervical": "TH-INFX", "thoracic": "TH-INFX"},
    "neuraxial_procedure": {"lumbar": "ASRA-HAEMATOMA", "cervical": "ASRA-HAEMATOMA", "thoracic": "ASRA-HAEMATOMA"},
    "cancer": {"lumbar": "LBP-V7", "cervical": "CN-V5", "thoracic": "LBP-V7"},
    "trauma": {"lumbar": "TRAUMA-TL", "cervical": "TRAUMA-C", "thoracic": "TRAUMA-TL"},
    "vertebral_fracture": {"lumbar": "VCF-V1", "cervical": "VCF-V1", "thoracic": "VCF-V1"},
    "prior_surgery": {"lumbar": "LBP-V5", "cervical": "CN-V3", "thoracic": "LBP-V5"},
    "therapy_failed": {"lumbar": "LBP-V3", "thoracic": "LBP-V3"},
    "fracture_risk": {"lumbar": "LBP-V6", "thoracic": "TH-VCF"},
    "weaker_risk": {"lumbar": "LBP-ACP-DEFER", "cervical": "LBP-ACP-DEFER", "thoracic": "LBP-ACP-DEFER"},
    "acute": {"lumbar": "LBP-V1", "cervical": "CN-V1", "thoracic": "TH-NONSPECIFIC"},
    "no_therapy": {"lumbar": "LBP-V2", "cervical": "CN-V7", "thoracic": "TH-NONSPECIFIC"},
}


def weeks_between(since: date | None, as_of: date) -> float | None:
    return None if since is None else max((as_of - since).days, 0) / 7


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


@dataclass(frozen=True)
class Doubt:
    """A possible red flag the record cannot settle: the card names it and asks, never reassures."""

    evidence: Evidence
    headline: str  # for the summary: "temperature 39.0 °C (preliminary)"
    question: str  # for the card: "confirm it: a fever makes the MRI urgent"
    if_confirmed: str | None = None  # the order's priority if the clinician confirms it (urgent | stat)


@dataclass(frozen=True)
class TherapyTrial:
    """Conservative therapy in this episode: when it began, and each kind in words."""

    weeks: float | None
    undated: bool
    descriptions: list[str]


class Findings:
    """The facts of one order, read once: what counts, what does not and why, the episode."""

    def __init__(self, facts: Facts):
        if facts.order is None:
            raise ValueError("the rules rate one order: these facts name none")
        self.facts = facts
        self.order = facts.order
        self.as_of = facts.as_of
        self.region = facts.order.region
        self.rule_region = self.region if self.region in ("lumbar", "cervical", "thoracic") else "lumbar"
        self.flags: dict[str, list[Evidence]] = {}
        self.not_counted: list[tuple[Evidence, str]] = [(item, why) for item, why in facts.set_aside]
        self.to_confirm: list[str] = []  # record entries to confirm, in words (the card's "confirm")
        self._count(facts.findings)
        self._derive_flags()
        self.episode = [e for c in EPISODE_CONCEPTS for e in self.flags.get(c, [])]
        dated = sorted((e.date, e.dated_by) for e in self.episode if e.date is not None)
        self.episode_start = dated[0][0] if dated else None
        self.episode_dated_by = dated[0][1] if dated else "onset"  # "recorded": no onset, the day written down
        self.episode_weeks = weeks_between(self.episode_start, self.as_of)
        self.radicular = self.has("radiculopathy", "stenosis")
        self.therapy = self._therapy()
        self.missing = [
            f"{SOURCE_LABELS[k]}: {facts.unread_sources[k]}" for k in RED_FLAG_SOURCES if k in facts.unread_sources
        ]
        self.imaging_unread = [
            f"{SOURCE_LABELS[k]}: {facts.unread_sources[k]}" for k in IMAGING_SOURCES if k in facts.unread_sources
        ]
        self.pregnant = self.has("pregnancy")
        self.child = facts.age is not None and facts.age < CHILD_AGE
        self.doubts = self._doubts()

    def without(self, items: list[Evidence]) -> Findings:
        """These findings as they would be without `items` (the verdict if an old finding is old)."""
        other = copy.copy(self)
        other.flags = {c: [e for e in found if e not in items] for c, found in self.flags.items()}
        other.flags = {c: found for c, found in other.flags.items() if found}
        other.doubts = [d for d in self.doubts if d.evidence not in items]
        return other

    def _doubts(self) -> list[Doubt]:
        """Possible red flags the record cannot settle: a result not verified or in a unit not
        recognised, numbness whose site is not coded, a fusion of any joint, stimulant use."""
        found = []
        for item, why in self.not_counted:
            if why.startswith(UNJUDGED_BECAUSE):
                state = item.status if why.startswith(item.status) else "unit not recognised"
                headline = f"{lower_first(item.value)} ({state})"
                found.append(Doubt(item, headline, UNJUDGED_QUESTION[item.concept_id], "urgent"))
        for item in self.evidence("numbness"):
            if self.is_new(item):
                when = format_ago(item.date, self.as_of) if item.date else "on the order"
                question = "where is the numbness? " + NUMBNESS_QUESTION[self.rule_region]
                priority = "stat" if self.rule_region == "lumbar" else "urgent"
                found.append(Doubt(item, f"numbness {when}", question, priority))
        for item in self.evidence("arthrodesis_status"):
            found.append(Doubt(item, "a fusion (any joint) in the record", FUSION_QUESTION[self.rule_region]))
        for item in self.evidence("stimulant_use"):
            found.append(
                Doubt(
                    item,
                    f"{lower_first(finding_name(item))} in the record",
                    "does the patient inject drugs? If so, a spinal infection is a concern",
                )
            )
        return found

    # ------------------------------------------------------------------ what counts
    def _count(self, findings: list[Evidence]) -> None:
        for item in findings:
            why = self._not_counted_because(item)
            if why is None:
                self.flags.setdefault(item.concept_id, []).append(item)
                self._ask_if_old(item)
            else:
                self.not_counted.append((item, why))

    def _not_counted_because(self, item: Evidence) -> str | None:
        """None when `item` counts for this order; else why not, in words."""
        if not (item.region in ("any", self.region) or self.region in ("multi", "unspecified")):
            return f"a {item.region} finding; this order is for the {self.region} spine"
        if item.origin == FROM_ORDER:
            return None  # the clinician states it today
        window = EPISODIC_DAYS.get(item.concept_id)
        if item.status == "resolved":
            if window is None and item.concept_id not in RESOLVED_RISKS:
                return f"resolved{' ' + item.abated.isoformat() if item.abated else ''}: history"
            if item.abated is None:
                return "resolved, no end date: history"
            days = window or RESOLVED_DAYS
            if (self.as_of - item.abated).days > days:
                return f"resolved {item.abated.isoformat()}: more than {plural(days, 'day')} ago"
            return None
        if window is None:
            return None  # chronic states and the rest count while active, whatever their date
        if item.date is None:
            return "undated: whether it is recent cannot be told"
        if (self.as_of - item.date).days > window:
            when = "recorded" if item.dated_by == "recorded" else "dated"
            return f"{when} {item.date.isoformat()}: only the last {plural(window, 'day')} count"
        return None

    def _ask_if_old(self, item: Evidence) -> None:
        """An old cancer or injection drug use entry counts, and the card asks whether it still is so.
        States that do not end (a past operation, MS, osteoporosis, HIV) are never questioned."""
        question = STILL_SO.get(item.concept_id)
        if (
            question
            and item.origin == FROM_RECORD
            and item.date is not None
            and (self.as_of - item.date).days > CONFIRM_CURRENT_DAYS
            and item.status == "active"
        ):
            self.to_confirm.append(f"{lower_first(finding_name(item))} recorded {item.date.year}: {question}")

    def _derive_flags(self) -> None:
        facts, as_of = self.facts, self.as_of
        labels = facts.concept_labels
        days = steroid_days(facts.medications, as_of)
        if days >= STEROID_DAYS:
            courses = [c for c in facts.medications if c.concept_id == "systemic_corticosteroid"]
            self._add(
                Evidence(
                    "long_term_steroids",
                    labels.get("long_term_steroids", "Long-term systemic steroids"),
                    ", ".join(c.reference for c in courses),
                    FROM_RECORD,
                    f"{days} days of systemic corticosteroid in the last year ({courses[0].description})",
                    courses[-1].start,
                    value=f"systemic steroids for {days} days in the last year",
                )
            )
        for course in facts.medications:
            if course.concept_id == "immunosuppressant_medication":
                self._add(
                    Evidence(
                        "immunosuppression",
                        labels.get("immunosuppression", "Immunosuppression"),
                        course.reference,
                        FROM_RECORD,
                        course.description,
                        course.start,
                        value=f"immunosuppressant: {course.description}",
                    )
                )
            elif course.concept_id == "anticoagulant_medication" and self._current(course):
                self._add(
                    Evidence(
                        "anticoagulant_medication",
                        labels.get("anticoagulant_medication", "Anticoagulant"),
                        course.reference,
                        FROM_RECORD,
                        course.description,
                        course.start,
                        value="on an anticoagulant",
                    )
                )
        age, sex = facts.age, facts.sex
        if age is not None and sex in FRACTURE_AGE and age > FRACTURE_AGE[sex]:
            self._add(
                Evidence(
                    "age_fracture_risk",
                    f"age {age}",
                    "Patient",
                    FROM_RECORD,
                    f"age {age}, {sex} (ACP 2007: fracture risk over {FRACTURE_AGE[sex]})",
                    value=f"age {age} ({sex}: fracture risk over {FRACTURE_AGE[sex]})",
                )
            )
        if age is not None and age > WEAKER_CANCER_AGE:
            self._add(
                Evidence(
                    "age_over_50",
                    f"age {age}",
                    "Patient",
                    FROM_RECORD,
                    f"age {age} (ACP 2007: over {WEAKER_CANCER_AGE} is a weaker cancer risk)",
                    value=f"age {age} (over {WEAKER_CANCER_AGE}: a weaker cancer risk)",
                )
            )

    def _current(self, course: MedicationCourse) -> bool:
        """A prescription that covers today, or whose length is unknown and that began in the last 90 days."""
        if course.start is None:
            return False
        if course.days is None:
            return (self.as_of - course.start).days <= 90
        return course.start <= self.as_of <= course.start + timedelta(days=course.days)

    def _add(self, item: Evidence) -> None:
        self.flags.setdefault(item.concept_id, []).append(item)

    def _therapy(self) -> TherapyTrial:
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
        descriptions = []
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
            more = ", ..." if len(uses) > 1 else ""
            descriptions.append(f"{description}{count}, {span} ({uses[0][1]}{more})")
        dated = [when for when, _, _ in items if when is not None]
        return TherapyTrial(
            weeks=weeks_between(min(dated), self.as_of) if dated else None,
            undated=bool(items) and not dated,
            descriptions=descriptions,
        )

    # ------------------------------------------------------------------ questions the rules ask
    def has(self, *concept_ids: str) -> bool:
        return any(self.flags.get(c) for c in concept_ids)

    def evidence(self, *concept_ids: str) -> list[Evidence]:
        return [e for c in concept_ids for e in self.flags.get(c, [])]

    def is_new(self, item: Evidence) -> bool:
        """Stated on the order, or dated in the last 12 weeks (ACP's subacute window): a finding a
        clinician would call new. Its own date, never the episode's: low back pain on a problem
        list for years would make every later entry "this episode's" (a second review)."""
        if item.origin == FROM_ORDER:
            return True
        return item.date is not None and (self.as_of - item.date).days <= NEW_DEFICIT_DAYS

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
