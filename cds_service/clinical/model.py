"""Plain data passed between the layers: facts in, verdict out. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from .record import Resource

Date = date  # for fields declared after a field named `date`, which hides the type in the class body

# Where a fact came from: the clinician's draft order (its reasonCode) or the patient's record.
FROM_ORDER = "order"
FROM_RECORD = "record"

# The data the rules read, by prefetch key. A red flag can hide in any of the first five,
# so "no red flags" may only be asserted when all of them were read.
RED_FLAG_SOURCES = ("patient", "conditions", "observations", "medications", "procedures")
IMAGING_SOURCES = ("imagingStudies", "diagnosticReports", "serviceRequests")
ALL_SOURCES = RED_FLAG_SOURCES + IMAGING_SOURCES

SOURCE_LABELS = {
    "patient": "Patient (age, sex)",
    "conditions": "Conditions (problems, diagnoses)",
    "observations": "Observations (temperature, ESR, CRP, WBC)",
    "medications": "MedicationRequests (steroids, immunosuppressants, analgesics)",
    "procedures": "Procedures (physical therapy, chiropractic, spine surgery, imaging done in clinic)",
    "imagingStudies": "ImagingStudies (prior spine imaging)",
    "diagnosticReports": "DiagnosticReports (prior spine imaging)",
    "serviceRequests": "completed ServiceRequests (prior spine imaging)",
}


@dataclass(frozen=True)
class Evidence:
    """One coded fact found in the data, with where it came from."""

    concept_id: str
    label: str  # the concept in clinical words
    reference: str  # e.g. "Condition/lbp-1"
    origin: str  # FROM_ORDER or FROM_RECORD
    description: str  # what was found, e.g. "ICD-10-CM G83.4 Cauda equina syndrome"
    date: date | None = None  # onset (Condition), effective (Observation), performed (Procedure)
    region: str = "any"
    # A Condition dated only by its recordedDate (no onset): "recorded", which says when it was
    # written down, not when it began.
    dated_by: str = "onset"
    status: str = "active"  # a Condition's clinical status: active | resolved (inactive, remission)
    abated: Date | None = None  # when a resolved Condition ended
    value: str = ""  # a measurement in words, e.g. "CRP 45 mg/L"
    display: str = ""  # the record's own words for it (the coding's display), e.g. "Foot drop, right foot"


@dataclass(frozen=True)
class MedicationCourse:
    """A prescription of a drug class over time (steroid duration, therapy trials, anticoagulation)."""

    concept_id: str
    label: str
    reference: str
    description: str
    start: date | None
    days: int | None  # supply in days including refills; None when it cannot be told


@dataclass(frozen=True)
class PriorImaging:
    """A spine study already done (undated ones are not kept: the rules could not place them)."""

    modality: str  # radiograph | ct | mri
    region: str
    reference: str
    description: str
    date: date


@dataclass(frozen=True)
class MriOrder:
    """A spine MRI among the draft orders."""

    reference: str  # "ServiceRequest/<id>"
    resource: Resource
    region: str  # lumbar | cervical | thoracic | multi | unspecified
    contrast: str  # without | with | with-and-without | unspecified
    display: str
    code: str = ""  # the coding that identified it, e.g. "cpt|72148"
    priority: str = "routine"  # ServiceRequest.priority: routine | urgent | asap | stat


@dataclass
class Facts:
    """Everything the rules need about one order, extracted from FHIR, with provenance."""

    as_of: date
    order: MriOrder | None  # None for the record's facts shared by every order of a call
    age: int | None = None
    sex: str | None = None
    findings: list[Evidence] = field(default_factory=list)  # red flags and episode conditions
    medications: list[MedicationCourse] = field(default_factory=list)
    therapy_procedures: list[Evidence] = field(default_factory=list)
    prior_imaging: list[PriorImaging] = field(default_factory=list)
    # Conditions in the record that do not count (refuted, entered in error), with why.
    set_aside: list[tuple[Evidence, str]] = field(default_factory=list)
    unread_sources: dict[str, str] = field(default_factory=dict)  # prefetch key -> why
    skipped: list[str] = field(default_factory=list)  # resources or values not used, and why
    concept_labels: dict[str, str] = field(default_factory=dict)  # concept id -> clinical words
    # ACR ratings by guideline variant: variant id -> {"mri-without": "usually-appropriate", ...}
    acr_ratings: dict[str, dict[str, str]] = field(default_factory=dict)

    def found(self, concept_id: str) -> list[Evidence]:
        return [item for item in self.findings if item.concept_id == concept_id]


@dataclass(frozen=True)
class NextStep:
    """What the guideline says to do besides the MRI (a referral, a test), for the card."""

    kind: str  # surgical-referral | blood-cultures | whole-spine
    text: str  # in words, e.g. "Refer to spinal surgery today"
    guideline_id: str  # where it is said


@dataclass
class Verdict:
    """What the rules decided for one order, in the words and parts the card is built from."""

    code: str  # indicated-urgent | indicated-routine | radiographs-first | low-value | insufficient-information
    variant_id: str | None  # guideline variant from guidelines.yaml
    picture: str  # the clinical picture in plain words, for the card's summary
    why: list[str] = field(default_factory=list)  # the decisive findings, each once, with value and date
    now: str | None = None  # what to do now, or instead of the MRI
    confirm: list[str] = field(default_factory=list)  # what would change this verdict (the card shows five)
    guideline_ids: list[str] = field(default_factory=list)  # concordant sources (evidence page)
    # -- what the card offers
    priority: str | None = None  # urgent verdicts: the order's priority the guideline asks (urgent | stat)
    next_steps: list[NextStep] = field(default_factory=list)
    # A finding the record cannot date (weakness, retention): the clinician says whether it is new.
    ask_if_new: bool = False
    priority_if_new: str = "urgent"  # the order's priority if it is new (stat for bladder or saddle symptoms)
    ask_what: str = "weakness"  # what the card asks about, for its buttons ("bladder or saddle symptoms")
    # The verdict if it is old and stable: (code, picture, PAMA rating), for the card's "old" button.
    if_old: tuple[str, str, str | None] | None = None
    # Possible red flags the record cannot settle, as questions: the card warns and asks, never
    # recommends cancelling (a preliminary temperature, numbness whose site is not coded).
    doubts: list[str] = field(default_factory=list)
    if_confirmed: str | None = None  # the order's priority if the doubt is confirmed (the card's button)
    first_study: str | None = None  # "radiograph" | "ct": the study to order instead of (or before) MRI
    first_study_required: bool = True  # False: a cheaper first study, MRI being appropriate too (ACR LBP V6)
    contrast: str | None = None  # what this indication wants: "without" | "with-and-without"; None: either
    contrast_reason: str = ""  # why, in words ("suspected infection", "pregnancy: no gadolinium")
    contrast_optional: bool = False  # ACR rates both: the contrast change is offered, not recommended
    suggest_cancel: bool = False
    override_set: str = "default"  # which override reasons fit this verdict (hooks.cards.OVERRIDE_SETS)
    # -- the evidence behind it (the evidence page lists all of it)
    red_flags_found: list[Evidence] = field(default_factory=list)
    red_flags_absent: list[str] = field(default_factory=list)  # this region's red flags not in the record
    # In the record but not counted for this order (another region, outside a window), with why.
    not_counted: list[tuple[Evidence, str]] = field(default_factory=list)
    prior_imaging: list[str] = field(default_factory=list)  # same-region studies in the last 12 months, in words
    episode_weeks: float | None = None
    episode_evidence: list[Evidence] = field(default_factory=list)
    therapy_weeks: float | None = None
    therapy_evidence: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # data that could not be read
    not_documented: list[str] = field(default_factory=list)  # data read, but what the rating needs is not in it
    skipped: list[str] = field(default_factory=list)  # resources or values not used, and why
    acr_rating: str | None = None  # ACR's rating of the ordered study in this variant, when known
    pama_rating: str | None = None  # appropriate | not-appropriate | no-criteria-apply | None
    extrapolated: bool = False
    # Rated by a guideline that is not ACR's (ACP's weaker risks) where ACR's own variant is not
    # clear: PAMA "no criteria apply" rather than a rating ACR did not give.
    no_acr_criteria: bool = False
    pregnant: bool = False
