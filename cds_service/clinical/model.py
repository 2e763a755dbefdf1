"""Plain data passed between the layers: facts in, verdict out. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from .record import Resource

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
    date: date | None = None
    region: str = "any"


@dataclass(frozen=True)
class MedicationCourse:
    """A prescription of a drug class over time (for steroid duration and therapy trials)."""

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
    # Conditions in the record that do not count (resolved, refuted, entered in error), with why.
    set_aside: list[tuple[Evidence, str]] = field(default_factory=list)
    unread_sources: dict[str, str] = field(default_factory=dict)  # prefetch key -> why
    skipped: list[str] = field(default_factory=list)  # resources or values not used, and why
    concept_labels: dict[str, str] = field(default_factory=dict)  # concept id -> clinical words

    def found(self, concept_id: str) -> list[Evidence]:
        return [item for item in self.findings if item.concept_id == concept_id]


@dataclass
class Verdict:
    code: str  # indicated-urgent | indicated-routine | radiographs-first | low-value | insufficient-information
    variant_id: str | None  # guideline variant from guidelines.yaml
    decisive_reason: str  # one clause in clinical words, for the card summary
    reasons: list[str] = field(default_factory=list)
    guideline_ids: list[str] = field(default_factory=list)  # concordant sources cited
    red_flags_found: list[Evidence] = field(default_factory=list)
    red_flags_absent: list[str] = field(default_factory=list)  # labels checked and not found
    # In the record but not counted for this order (another region, too old), with why: never "not found".
    red_flags_not_relevant: list[tuple[Evidence, str]] = field(default_factory=list)
    prior_imaging: list[str] = field(default_factory=list)  # same-region studies in the last 12 months, in words
    episode_weeks: float | None = None
    episode_evidence: list[Evidence] = field(default_factory=list)
    therapy_weeks: float | None = None
    therapy_evidence: list[str] = field(default_factory=list)
    would_change: list[str] = field(default_factory=list)
    advice: str | None = None  # what to do instead, in one sentence
    missing: list[str] = field(default_factory=list)  # data that could not be read
    not_documented: list[str] = field(default_factory=list)  # data read, but what the rating needs is not in it
    skipped: list[str] = field(default_factory=list)  # resources or values not used, and why
    pama_rating: str | None = None  # appropriate | not-appropriate | no-criteria-apply | None
    suggest_cancel: bool = False
    suggest_first_study: str | None = None  # "radiograph" | "ct"
    contrast_needed: bool = False  # an infection/tumour flag wants contrast
    extrapolated: bool = False
