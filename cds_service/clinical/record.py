"""The patient's record as the hook call got it: FHIR resources (plain dicts) by prefetch key,
and what could not be read and why. Filled by `fhir` (prefetch, then the EHR's FHIR server);
read by `facts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A FHIR resource (or any JSON object) as parsed: the record is read as it came, never trusted.
Resource = dict[str, Any]

# prefetch key -> the resource type its template asks for
EXPECTED_TYPES = {
    "patient": "Patient",
    "conditions": "Condition",
    "observations": "Observation",
    "medications": "MedicationRequest",
    "procedures": "Procedure",
    "imagingStudies": "ImagingStudy",
    "diagnosticReports": "DiagnosticReport",
    "serviceRequests": "ServiceRequest",
}


@dataclass
class ClinicalData:
    """The patient's resources by prefetch key, plus what could not be read and why."""

    resources: dict[str, list[Resource]] = field(default_factory=dict)
    # Resources a search returned with search.mode = include (e.g. Medication for
    # MedicationRequest.medicationReference), by "Type/id".
    included: dict[str, Resource] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Resources left out because they are not shown to be the context patient's (another
    # patient's, or without the subject FHIR requires): counted here, noted in `notes`.
    other_patient: int = 0

    @property
    def patient(self) -> Resource | None:
        patients = self.resources.get("patient") or []
        return patients[0] if patients else None

    def of(self, key: str) -> list[Resource]:
        return self.resources.get(key, [])
