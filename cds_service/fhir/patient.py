"""Whose resource is it: only the hook's own patient (`context.patientId`) is read.

An EHR bug or a shared Bundle can put another patient's resources in the prefetch or in a FHIR
server's answer. A resource belongs to the context patient when its `subject` (or, for types that
name it so, `patient`) is a reference to `Patient/<context.patientId>`: relative, or an absolute
URL ending in `/Patient/<id>`, either with `/_history/<version>`. A Patient resource belongs when
its `id` is the context id. Any other subject (another patient, a Group, a reference by identifier
alone, a contained or `urn:uuid:` reference) is not shown to be this patient's and is left out.

A resource with no subject at all is kept only where FHIR R4 makes the subject optional
(Observation, DiagnosticReport: 0..1), since it came from a search by patient; Condition,
MedicationRequest, Procedure, ImagingStudy and ServiceRequest require it (1..1), and one without
it is left out.
"""

from __future__ import annotations

from typing import Literal

# Types read from the record whose subject FHIR R4 makes optional (0..1).
SUBJECT_OPTIONAL = frozenset({"Observation", "DiagnosticReport"})

Owner = Literal["own", "other", "none"]


def patient_reference_id(reference: object) -> str | None:
    """The id a Reference names when it names a Patient (`Patient/<id>`, `<base>/Patient/<id>`,
    either with `/_history/<version>`); None for anything else."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or parts[-2] != "Patient" or not parts[-1]:
        return None
    if len(parts) > 2 and not text.startswith(("http://", "https://")):
        return None  # neither relative (Patient/<id>) nor absolute
    return parts[-1]


def owner(resource: dict, patient_id: str) -> Owner:
    """The owner: "own" when `resource` is the patient `patient_id` or names it as its subject (or patient);
    "none" when it names no subject at all; "other" for any other subject."""
    if resource.get("resourceType") == "Patient":
        return "own" if resource.get("id") == patient_id else "other"
    subject = resource.get("subject")
    if subject is None:
        subject = resource.get("patient")
    if subject is None:
        return "none"
    return "own" if patient_reference_id(subject) == patient_id else "other"
