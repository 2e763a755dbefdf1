"""CDS Hooks discovery: the two services and the prefetch templates the rules read."""

from __future__ import annotations

from ..clinical.mappings import Mappings

SERVICE_HOOKS = {
    "spine-mri-order-select": "order-select",
    "spine-mri-order-sign": "order-sign",
}
USAGE = (
    "Send the prefetch below (or let the service read your FHIR server: see docs/integrating.md in the "
    "service's repository). "
    "The service reads Patient, Conditions, vital-sign and lab Observations, MedicationRequests, "
    "Procedures and prior spine imaging (radiographs, CT, MRI of the last 12 months, as ImagingStudy, "
    "DiagnosticReport, completed ServiceRequest or Procedure), and rates each spine MRI ServiceRequest "
    "among draftOrders (order-select: the selected ones) with a card and a PAMA rating systemAction."
)


# Page size asked of the FHIR server: large pages mean fewer round trips (servers may cap it).
PAGE_SIZE = 200


def prefetch_templates(mappings: Mappings) -> dict[str, str]:
    loinc = ",".join(f"http://loinc.org|{code}" for code in mappings.observation_codes())
    count = f"&_count={PAGE_SIZE}"
    return {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}" + count,
        "observations": "Observation?patient={{context.patientId}}&code=" + loinc + count,
        "medications": "MedicationRequest?patient={{context.patientId}}&_include=MedicationRequest:medication" + count,
        "procedures": "Procedure?patient={{context.patientId}}" + count,
        "imagingStudies": "ImagingStudy?patient={{context.patientId}}" + count,
        "diagnosticReports": "DiagnosticReport?patient={{context.patientId}}" + count,
        "serviceRequests": "ServiceRequest?patient={{context.patientId}}&status=completed" + count,
    }


def discovery_document(mappings: Mappings) -> dict:
    prefetch = prefetch_templates(mappings)
    return {
        "services": [
            {
                "hook": "order-select",
                "id": "spine-mri-order-select",
                "title": "Spine MRI appropriateness (order-select)",
                "description": "When a spine MRI is selected, says whether it is indicated (urgently or "
                "routinely), whether radiographs come first, or whether it is low-value, with the red flags "
                "and guideline variant behind the advice (ACR Appropriateness Criteria, ACP, Choosing Wisely, "
                "NICE NG59).",
                "usageRequirements": USAGE,
                "prefetch": prefetch,
            },
            {
                "hook": "order-sign",
                "id": "spine-mri-order-sign",
                "title": "Spine MRI appropriateness (order-sign)",
                "description": "When spine MRI orders are signed, rates each one against the guidelines and "
                "returns a PAMA appropriateness rating for the order (Argonaut CDS Hooks for PAMA).",
                "usageRequirements": USAGE,
                "prefetch": prefetch,
            },
        ]
    }
