"""Extract facts from FHIR resources (plain dicts), honouring FHIR status semantics.

Malformed resources never raise: each is skipped with a note that reaches the card.
What counts as a red flag, and for how long, is decided in `rules`; this module only
says what is there, when, and where it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from .codesystems import short_system
from .mappings import CodeMatch, Mappings, Threshold, unit_key
from .model import (
    FROM_ORDER,
    FROM_RECORD,
    Evidence,
    Facts,
    MedicationCourse,
    MriOrder,
    PriorImaging,
)
from .record import ClinicalData, Resource

log = logging.getLogger(__name__)

IMAGING_MODALITIES = ("radiograph", "ct", "mri")
PRIORITIES = ("routine", "urgent", "asap", "stat")  # ServiceRequest.priority (FHIR R4 request-priority)
IGNORED_VERIFICATION = {"refuted", "entered-in-error"}
INACTIVE_CLINICAL = {"resolved", "inactive", "remission"}
USABLE_OBSERVATION_STATUS = {"final", "amended", "corrected"}
# A result not yet verified: not counted, never silent. A red-flag value in one is set aside with
# why, and the card asks to confirm it (a 39.0 preliminary temperature is not "no fever").
UNVERIFIED_OBSERVATION_STATUS = {"preliminary", "registered"}
USABLE_MEDICATION_STATUS = {"active", "completed", "stopped", "on-hold"}
USABLE_PROCEDURE_STATUS = {"completed", "in-progress"}
USABLE_REPORT_STATUS = {"final", "amended", "corrected", "appended"}
SYSTEM_LABELS = {
    "snomed": "SNOMED CT",
    "icd10cm": "ICD-10-CM",
    "icd10": "ICD-10",
    "loinc": "LOINC",
    "rxnorm": "RxNorm",
    "cpt": "CPT",
}
# UCUM units as a card writes them.
# (keyed as mappings.unit_key spells a unit)
UNIT_WORDS = {"cel": "°C", "[degf]": "°F", "mm/h": "mm/h", "mg/l": "mg/L", "mg/dl": "mg/dL", "10*3/ul": "x10^3/µL"}
# Days per UCUM time unit, for medication supply durations.
DAYS_PER_UNIT = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30, "months": 30}


def parse_date(value: object) -> date | None:
    """A FHIR date/dateTime (any precision) as a date; None when absent or malformed."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> Resource:
    return value if isinstance(value, dict) else {}


def _ref(resource: Resource) -> str:
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id', '?')}"


def _codes(concept: object) -> list[Resource]:
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _describe_coding(coding: Resource, match: CodeMatch) -> str:
    system = SYSTEM_LABELS.get(match.system, match.system)
    display = coding.get("display") or match.display
    return f"{system} {coding.get('code')} {display}".strip()


def _status_code(concept: object) -> str | None:
    for coding in _codes(concept):
        if coding.get("code"):
            return str(coding["code"])
    return None


def _code_matches(mappings: Mappings, concept: object) -> list[tuple[Resource, CodeMatch]]:
    """(coding, match) for each coding of the concept the mappings know. Most of a patient's record
    matches nothing: the extractors ask this first and skip dates and status for the rest."""
    return [
        (coding, match)
        for coding in _codes(concept)
        for match in mappings.match_coding(coding.get("system"), coding.get("code"))
    ]


def _evidence_from_concept(
    mappings: Mappings,
    concept: object,
    reference: str,
    origin: str,
    when: date | None,
    matches: list[tuple[Resource, CodeMatch]] | None = None,
) -> list[Evidence]:
    found = []
    for coding, match in _code_matches(mappings, concept) if matches is None else matches:
        found.append(
            Evidence(
                concept_id=match.concept.id,
                label=match.concept.label,
                reference=reference,
                origin=origin,
                description=_describe_coding(coding, match),
                date=when,
                region=match.region,
                display=str(coding.get("display") or match.display),
            )
        )
    # Several codings of one concept for the same fact are one finding.
    unique: dict[str, Evidence] = {}
    for item in found:
        unique.setdefault(item.concept_id, item)
    return list(unique.values())


# ---------------------------------------------------------------------------- orders


def find_mri_orders(draft_orders: object, mappings: Mappings, selections: list[str] | None) -> list[MriOrder]:
    """The spine MRI ServiceRequests among the draft orders (only the selected ones if given)."""
    orders: list[MriOrder] = []
    if not isinstance(draft_orders, dict):
        return orders
    entries = _list(draft_orders.get("entry"))
    wanted = set(selections) if selections is not None else None
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        reference = f"ServiceRequest/{resource.get('id')}"
        if wanted is not None and reference not in wanted and str(resource.get("id")) not in wanted:
            continue
        order = _classify_order(resource, reference, mappings)
        if order is not None:
            orders.append(order)
    return orders


def _classify_order(resource: Resource, reference: str, mappings: Mappings) -> MriOrder | None:
    code = resource.get("code")
    best = None
    for coding in _codes(code):
        order = mappings.order_for_coding(coding.get("system"), coding.get("code"))
        if order is None or order.modality != "mri":
            continue
        # Prefer the coding that tells the most (a region and a contrast over "unspecified").
        score = (order.region not in ("unspecified",)) + (order.contrast != "unspecified")
        if best is None or score > best[0]:
            best = (score, order, coding)
    if best is None:
        return None
    _, order, coding = best
    display = (code or {}).get("text") or coding.get("display") or f"{coding.get('code')}"
    return MriOrder(
        reference=reference,
        resource=resource,
        region=order.region,
        contrast=order.contrast,
        display=display,
        code=f"{short_system(coding.get('system'))}|{str(coding.get('code')).strip()[:64]}",
        priority=resource["priority"] if resource.get("priority") in PRIORITIES else "routine",
    )


# ---------------------------------------------------------------------------- facts


def record_facts(data: ClinicalData, mappings: Mappings, as_of: date) -> Facts:
    """The facts of the patient's record, the same for every order of one hook call."""
    facts = Facts(as_of=as_of, order=None, unread_sources=dict(data.unread), skipped=list(data.notes))
    facts.concept_labels = mappings.concept_labels
    facts.acr_ratings = mappings.acr_ratings
    _patient_facts(facts, data.patient)
    # Most of a record means nothing to the rules: a resource is read only when one of its codings
    # is known (one cached lookup each), before any status, date or evidence work.
    for condition in _with_known_coding(data.of("conditions"), "code", mappings):
        _guarded(facts, condition, _condition_facts, mappings)
    for observation in _with_known_coding(data.of("observations"), "code", mappings):
        _guarded(facts, observation, _observation_facts, mappings)
    for request in data.of("medications"):  # also matched by ingredient name: each one is read
        _guarded(facts, request, _medication_facts, mappings, data.included)
    for procedure in _with_known_coding(data.of("procedures"), "code", mappings):
        _guarded(facts, procedure, _procedure_facts, mappings)
    for key in ("imagingStudies", "diagnosticReports", "serviceRequests"):
        for resource in _with_known_coding(data.of(key), "code", mappings, always="ImagingStudy"):
            _guarded(facts, resource, _imaging_facts, mappings)
    return facts


def _with_known_coding(resources: list[Any], field: str, mappings: Mappings, always: str | None = None) -> list[Any]:
    """The resources whose `field` CodeableConcept has a coding the mappings know (`Mappings.knows`),
    plus any that is not a JSON object (its extractor notes it) or of type `always`. One loop over
    the list, not a call per resource: this runs for every resource of every record."""
    known, knows = mappings.known_codings, mappings.knows  # the cache read inline: one call less per coding
    worth = []
    for resource in resources:
        if type(resource) is not dict or (always and resource.get("resourceType") == always):
            worth.append(resource)
            continue
        concept = resource.get(field)
        codings = concept.get("coding") if type(concept) is dict else None
        if type(codings) is not list:
            continue
        for coding in codings:
            if type(coding) is dict:
                system, code = coding.get("system"), coding.get("code")
                try:
                    hit = known[(system, code)]
                except (KeyError, TypeError):  # not asked yet, or a code that cannot be a key
                    hit = knows(system, code)
                if hit:
                    worth.append(resource)
                    break
    return worth


def extract_facts(
    order: MriOrder, data: ClinicalData, mappings: Mappings, as_of: date, record: Facts | None = None
) -> Facts:
    """The facts for one order: its own reasons first, then the record's (`record` when already read)."""
    record = record or record_facts(data, mappings, as_of)
    # the rules only read facts: the record's lists are shared, the findings get the order's own first
    facts = replace(record, order=order, findings=[])
    _order_reasons(facts, order, mappings, as_of)
    facts.findings.extend(record.findings)
    return facts


def _guarded(facts: Facts, resource: object, handler: Callable[..., None], *args: Any) -> None:
    """Run one extractor; a malformed resource is skipped with a note, never a crash."""
    if not isinstance(resource, dict):
        facts.skipped.append("a prefetch entry that is not a JSON object was skipped")
        return
    try:
        handler(facts, resource, *args)
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        log.warning("skipped malformed %s: %s", _ref(resource), error)
        facts.skipped.append(f"{_ref(resource)} was skipped: it is malformed ({type(error).__name__})")


def _patient_facts(facts: Facts, patient: Resource | None) -> None:
    if not isinstance(patient, dict):
        return
    birth = parse_date(patient.get("birthDate"))
    if birth:
        before_birthday = (facts.as_of.month, facts.as_of.day) < (birth.month, birth.day)
        facts.age = facts.as_of.year - birth.year - before_birthday
    elif patient.get("birthDate") is not None:
        facts.skipped.append(f"{_ref(patient)}: birthDate is not a FHIR date, age unknown")
    gender = patient.get("gender")
    facts.sex = gender if gender in ("male", "female", "other", "unknown") else None


def _order_reasons(facts: Facts, order: MriOrder, mappings: Mappings, as_of: date) -> None:
    reasons = order.resource.get("reasonCode")
    if not isinstance(reasons, list):
        return
    for reason in reasons:
        # The clinician states the indication today; it dates from the order.
        facts.findings.extend(_evidence_from_concept(mappings, reason, order.reference, FROM_ORDER, None))


def _condition_facts(facts: Facts, condition: Resource, mappings: Mappings) -> None:
    matches = _code_matches(mappings, condition.get("code"))
    if not matches:
        return
    verification = _status_code(condition.get("verificationStatus"))
    clinical = _status_code(condition.get("clinicalStatus"))
    abated = parse_date(condition.get("abatementDateTime"))
    if abated is None and isinstance(condition.get("abatementPeriod"), dict):
        abated = parse_date(condition["abatementPeriod"].get("end") or condition["abatementPeriod"].get("start"))
    if clinical is None and abated is not None:
        clinical = "resolved"
    onset = parse_date(condition.get("onsetDateTime"))
    if onset is None and isinstance(condition.get("onsetPeriod"), dict):
        onset = parse_date(condition["onsetPeriod"].get("start"))
    recorded = parse_date(condition.get("recordedDate"))
    for when, name in ((onset, "onset"), (recorded, "recorded date")):
        if when is not None and when > facts.as_of:
            facts.skipped.append(f"{_ref(condition)}: the {name} {when.isoformat()} is in the future: not used")
    onset = onset if onset is None or onset <= facts.as_of else None
    recorded = recorded if recorded is None or recorded <= facts.as_of else None
    found = [
        replace(
            item,
            date=onset or recorded,
            dated_by="onset" if onset else "recorded",
            status="resolved" if clinical in INACTIVE_CLINICAL else "active",
            abated=abated,
        )
        for item in _evidence_from_concept(mappings, condition.get("code"), _ref(condition), FROM_RECORD, None, matches)
    ]
    if verification in IGNORED_VERIFICATION:
        # Not counted, but the card must not call it absent either.
        facts.set_aside.extend((item, f"verification status {verification}") for item in found)
        return
    if clinical in INACTIVE_CLINICAL and "cancer_history" in mappings.concepts:
        # A resolved cancer is still a history of cancer, whenever it ended.
        found = [
            replace(
                item,
                concept_id="cancer_history",
                label=mappings.concepts["cancer_history"].label,
                description=item.description + f" ({clinical})",
                status="active",
            )
            if item.concept_id in ("cancer", "cancer_history")
            else item
            for item in found
        ]
    facts.findings.extend(found)


def _quantity(value: Resource) -> tuple[float | None, str | None]:
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None, None
    unit = value.get("code") if value.get("system") in (None, "http://unitsofmeasure.org") else None
    return float(number), unit or value.get("code") or value.get("unit")


def _measured(
    mappings: Mappings, threshold: Threshold, observation: Resource, value: float, unit: str | None, when: date | None
) -> Evidence:
    """A measured value as a finding: "CRP 45 mg/L", dated."""
    concept = mappings.concepts[threshold.concept_id]
    words = UNIT_WORDS.get(unit_key(unit), unit) if unit else "(no unit)"
    return Evidence(
        concept_id=concept.id,
        label=concept.label,
        reference=_ref(observation),
        origin=FROM_RECORD,
        description=f"{threshold.display} {value:g} {unit or ''}".rstrip()
        + (f" on {when.isoformat()}" if when else ""),
        date=when,
        value=f"{threshold.display} {value:g} {words}",
    )


def _observation_facts(facts: Facts, observation: Resource, mappings: Mappings) -> None:
    status = observation.get("status")
    if status not in USABLE_OBSERVATION_STATUS and status not in UNVERIFIED_OBSERVATION_STATUS:
        return
    codings = _codes(observation.get("code"))
    matches = _code_matches(mappings, observation.get("code"))
    if not matches and not any(
        c.get("system") == "http://loinc.org" and str(c.get("code")) in mappings.thresholds for c in codings
    ):
        return
    when = parse_date(observation.get("effectiveDateTime")) or parse_date(observation.get("issued"))
    if when is None and isinstance(observation.get("effectivePeriod"), dict):
        when = parse_date(observation["effectivePeriod"].get("start"))
    for coding in _codes(observation.get("code")):
        if coding.get("system") != "http://loinc.org":
            continue
        for threshold in mappings.thresholds.get(str(coding.get("code")), ()):
            quantity = observation.get("valueQuantity")
            if not isinstance(quantity, dict):
                facts.skipped.append(f"{_ref(observation)}: {threshold.display} has no numeric value")
                continue
            value, unit = _quantity(quantity)
            if value is None:
                facts.skipped.append(f"{_ref(observation)}: {threshold.display} value is not a number")
                continue
            canonical = threshold.to_canonical(value, unit)
            if canonical is None:
                # Not judged, and not silent either: the card asks to check it.
                facts.skipped.append(
                    f"{_ref(observation)}: {threshold.display} in unit '{unit}' was not used (unit not recognised)"
                )
                item = _measured(mappings, threshold, observation, value, unit, when)
                facts.set_aside.append((item, f"unit '{unit}' not recognised: the value was not judged"))
            elif not threshold.is_met(canonical):
                continue
            elif status in UNVERIFIED_OBSERVATION_STATUS:
                item = replace(_measured(mappings, threshold, observation, value, unit, when), status=str(status))
                facts.set_aside.append((item, f"{status} result, not yet verified"))
            else:
                facts.findings.append(_measured(mappings, threshold, observation, value, unit, when))
    if status in UNVERIFIED_OBSERVATION_STATUS:
        return  # a coded finding in an unverified result waits for its verification
    # Observations may also carry coded findings (e.g. a problem-style SNOMED code).
    facts.findings.extend(
        item
        for item in _evidence_from_concept(
            mappings, observation.get("code"), _ref(observation), FROM_RECORD, when, matches
        )
        if item.concept_id not in mappings.threshold_concepts
    )


def _medication_concept(request: Resource, included: dict[str, Resource]) -> Resource | None:
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    reference = request.get("medicationReference")
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if isinstance(target, str) and target.startswith("#"):
        for contained in request.get("contained") or []:
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("code") if isinstance(contained.get("code"), dict) else None
    elif isinstance(target, str) and target in included:
        code = included[target].get("code")
        return code if isinstance(code, dict) else None
    display = reference.get("display")
    return {"text": display} if isinstance(display, str) else None


def _medication_days(request: Resource) -> tuple[date | None, int | None]:
    dispense = _dict(request.get("dispenseRequest"))
    start = parse_date(request.get("authoredOn"))
    validity = _dict(dispense.get("validityPeriod"))
    start = parse_date(validity.get("start")) or start
    days = None
    supply = dispense.get("expectedSupplyDuration")
    if isinstance(supply, dict) and isinstance(supply.get("value"), (int, float)):
        per_unit = DAYS_PER_UNIT.get(str(supply.get("code") or supply.get("unit") or "d").lower())
        if per_unit:
            repeats = dispense.get("numberOfRepeatsAllowed")
            repeats = repeats if isinstance(repeats, int) and repeats >= 0 else 0
            days = round(supply["value"] * per_unit * (1 + repeats))
    for dosage in request.get("dosageInstruction") or []:
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        if not isinstance(repeat, dict):
            continue
        bounds = repeat.get("boundsPeriod")
        if isinstance(bounds, dict):
            begin, end = parse_date(bounds.get("start")), parse_date(bounds.get("end"))
            start = begin or start
            if begin and end and days is None:
                days = (end - begin).days + 1
        duration = repeat.get("boundsDuration")
        if isinstance(duration, dict) and days is None and isinstance(duration.get("value"), (int, float)):
            per_unit = DAYS_PER_UNIT.get(str(duration.get("code") or duration.get("unit") or "").lower())
            if per_unit:
                days = round(duration["value"] * per_unit)
    return start, days


def _medication_facts(facts: Facts, request: Resource, mappings: Mappings, included: dict[str, Resource]) -> None:
    if request.get("status") not in USABLE_MEDICATION_STATUS:
        return
    concept = _medication_concept(request, included)
    if concept is None:
        facts.skipped.append(f"{_ref(request)}: no medication code or name")
        return
    matched: dict[str, str] = {}
    codings = _codes(concept)
    for coding in codings:
        for match in mappings.match_coding(coding.get("system"), coding.get("code")):
            matched.setdefault(match.concept.id, _describe_coding(coding, match))
    names = [concept.get("text"), *(coding.get("display") for coding in codings)]
    # a name alone (no codings) is the common case: taken as it is, without a join (1.4% of a hook at 200 resources)
    text = " ".join(str(part) for part in names if part) if len(names) > 1 else names[0]
    if text and not isinstance(text, str):
        text = str(text)
    if text:
        for found in mappings.match_medication_name(text):
            matched.setdefault(found.id, text)
    if not matched:
        return
    start, days = _medication_days(request)
    for concept_id, description in matched.items():
        label = mappings.concepts[concept_id].label
        facts.medications.append(MedicationCourse(concept_id, label, _ref(request), description, start, days))


def _procedure_facts(facts: Facts, procedure: Resource, mappings: Mappings) -> None:
    if procedure.get("status") not in USABLE_PROCEDURE_STATUS:
        return
    matches = _code_matches(mappings, procedure.get("code"))
    if not matches and not any(
        mappings.order_for_coding(c.get("system"), c.get("code")) for c in _codes(procedure.get("code"))
    ):
        return
    when = parse_date(procedure.get("performedDateTime"))
    if when is None and isinstance(procedure.get("performedPeriod"), dict):
        when = parse_date(procedure["performedPeriod"].get("start"))
    # EHRs record a radiograph or CT done in clinic as a Procedure with its CPT code.
    if _prior_imaging(facts, procedure, [procedure.get("code")], when, mappings):
        return
    for item in _evidence_from_concept(mappings, procedure.get("code"), _ref(procedure), FROM_RECORD, when, matches):
        if mappings.concepts[item.concept_id].kind == "therapy":
            facts.therapy_procedures.append(item)
        else:
            facts.findings.append(item)


def _imaging_facts(facts: Facts, resource: Resource, mappings: Mappings) -> None:
    kind = resource.get("resourceType")
    status = resource.get("status")
    if kind == "DiagnosticReport" and status not in USABLE_REPORT_STATUS:
        return
    if kind == "ServiceRequest" and status != "completed":
        return
    if kind == "ImagingStudy" and status not in ("available", None):
        return
    concepts = [resource.get("code")] if kind != "ImagingStudy" else list(resource.get("procedureCode") or [])
    if not any(
        mappings.order_for_coding(c.get("system"), c.get("code")) for concept in concepts for c in _codes(concept)
    ):
        return
    period = _dict(resource.get("effectivePeriod"))
    when = (
        parse_date(resource.get("effectiveDateTime"))
        or parse_date(period.get("start"))
        or parse_date(resource.get("started"))
        or parse_date(resource.get("occurrenceDateTime"))
        or parse_date(resource.get("authoredOn"))
        or parse_date(resource.get("issued"))
    )
    _prior_imaging(facts, resource, concepts, when, mappings)


def _prior_imaging(
    facts: Facts, resource: Resource, concepts: list[Any], when: date | None, mappings: Mappings
) -> bool:
    """Record the resource as a prior spine study when one of its codes is a spine imaging code."""
    for concept in concepts:
        for coding in _codes(concept):
            order = mappings.order_for_coding(coding.get("system"), coding.get("code"))
            if order is not None and order.modality not in IMAGING_MODALITIES:
                continue  # a referral or lab order's code (mappings/orders.yaml next steps)
            if order is not None and when is None:
                facts.skipped.append(f"{_ref(resource)}: a spine study without a date was not counted as prior imaging")
                return True
            if order is not None and when is not None:
                facts.prior_imaging.append(
                    PriorImaging(
                        modality=order.modality,
                        region=order.region,
                        reference=_ref(resource),
                        description=coding.get("display") or str(coding.get("code")),
                        date=when,
                    )
                )
                return True
    return False
