"""One hook call, end to end: check the request, find the spine MRI orders, read the data,
decide, and build the CDS Hooks response. HTTP lives in `web`; this module is called by the
server and by `cds-service evaluate` alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from ..clinical.facts import extract_facts, find_mri_orders, record_facts
from ..clinical.mappings import Mappings
from ..clinical.model import MriOrder, Verdict
from ..clinical.record import ClinicalData
from ..clinical.rules import decide
from ..fhir.client import FhirAuthorizationError, FhirFetcher, describe_host, fetchable, log_fetch
from ..fhir.prefetch import from_prefetch
from .cards import build_card
from .discovery import SERVICE_HOOKS, prefetch_templates
from .evidence import evidence_page
from .ids import new_uuid
from .request import HookRequestError, check_request

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What was decided for one order: the row a utilization analyst counts."""

    card_uuid: str
    consult_id: str
    order_reference: str
    region: str
    contrast: str
    verdict: str
    variant: str | None
    rating: str | None
    suggestion_kinds: dict[str, str] = field(default_factory=dict)  # suggestion uuid -> cards.SUGGEST_*
    order_code: str = ""  # e.g. "cpt|72148"
    red_flags: list[str] = field(default_factory=list)  # concept ids found
    unread_sources: list[str] = field(default_factory=list)  # prefetch keys that could not be read
    # The override reasons the card offered (code -> display): feedback may name only these.
    override_reasons: dict[str, str] = field(default_factory=dict)
    # What makes this evaluation "the same" as an earlier one (see `fingerprint`).
    fingerprint: str = ""
    card_shown: bool = True  # False: order-sign after the same order-select: rating only, no second card


@dataclass
class HookResult:
    response: dict
    evaluations: list[Evaluation] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


CLINICAL_SOURCES = ("conditions", "observations", "medications", "procedures")


def gather(body: dict, mappings: Mappings, fetcher: FhirFetcher | None, result: HookResult) -> ClinicalData:
    """Prefetch first; what it lacks, from the EHR's FHIR server when that server is allowed."""
    # only the context patient's resources are read (the others are left out, counted, noted)
    context = body.get("context")
    patient = context.get("patientId") if isinstance(context, dict) else None
    patient_id = patient if isinstance(patient, str) else None
    data = from_prefetch(body.get("prefetch"), patient_id, body.get("hookInstance"))
    missing = fetchable(data)
    base = body.get("fhirServer")
    if not missing:
        return data
    if fetcher is not None and fetcher.settings.allows(base):
        started = time.perf_counter()
        try:
            timings = fetcher.fill(data, body, prefetch_templates(mappings), missing)
        except FhirAuthorizationError as error:
            raise HookRequestError(400, str(error)) from None
        result.timings_ms["fhir"] = (time.perf_counter() - started) * 1000
        result.timings_ms["fhir_slowest"] = max(timings.values(), default=0.0)
        result.timings_ms["fhir_sum"] = sum(timings.values())
        log_fetch(str(body.get("hookInstance", "")), str(base), timings, data)
        return data
    if isinstance(base, str) and base:
        why = "and the request's fhirServer is not on this service's allowlist (CDS_FHIR_ALLOWED_SERVERS)"
        data.notes.append(
            f"the FHIR server {describe_host(base)} is not on this service's allowlist "
            "(CDS_FHIR_ALLOWED_SERVERS): evaluated from the prefetch alone"
        )
        log.info(
            json.dumps(
                {
                    "event": "fhir-not-allowed",
                    "hookInstance": body.get("hookInstance"),
                    "fhirServer": describe_host(base),
                }
            )
        )
    else:
        why = "and the request names no fhirServer to read it from"
    for key in missing:  # so a 412 says why each source stayed unread
        data.unread[key] = f"{data.unread[key]}, {why}"
    return data


def fingerprint(context: dict, order: MriOrder, verdict: Verdict) -> str:
    """What decides that an order-sign repeats an order-select: the same patient, encounter and
    order (its codes, reasons and priority), rated the same (verdict, variant, rating) from the
    same findings (each red flag and episode finding with its date). A changed order, a new
    finding or a different verdict is a new question and gets its card again."""

    def codes(concept: object) -> list[str]:
        codings = concept.get("coding") if isinstance(concept, dict) else None
        return (
            sorted(f"{c.get('system')}|{c.get('code')}" for c in codings or [] if isinstance(c, dict))
            if isinstance(codings, list)
            else []
        )

    reasons = order.resource.get("reasonCode")
    parts = [
        str(context.get("patientId")),
        str(context.get("encounterId")),
        order.reference,
        codes(order.resource.get("code")),
        sorted(code for reason in reasons for code in codes(reason)) if isinstance(reasons, list) else [],
        order.priority,
        verdict.code,
        verdict.variant_id,
        verdict.pama_rating,
        sorted(f"{e.concept_id}|{e.date}" for e in verdict.red_flags_found + verdict.episode_evidence),
    ]
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()


# (fingerprint) -> True when a card for it was already shown; None when that cannot be told now
ShownBefore = Callable[[str], "bool | None"]
# evidence page data -> the URL of that page (web seals the data into the link)
EvidenceLink = Callable[[dict], str]


def evaluate_hook(
    service_id: str,
    body: dict,
    mappings: Mappings,
    as_of: date | None = None,
    data: ClinicalData | None = None,
    fetcher: FhirFetcher | None = None,
    shown_before: ShownBefore | None = None,
    evidence_link: EvidenceLink | None = None,
) -> HookResult:
    """Rate each spine MRI order of the call. `shown_before` (order-sign): the card is left out
    when the same order was carded at order-select, unchanged; `evidence_link`: each card links
    its evidence page."""
    started = time.perf_counter()
    check_request(service_id, body)
    context = body["context"]
    selections = context.get("selections") if SERVICE_HOOKS[service_id] == "order-select" else None
    orders = find_mri_orders(context["draftOrders"], mappings, selections)
    result = HookResult(response={"cards": []})
    if not orders:
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return result
    as_of = as_of or datetime.now(UTC).date()
    read_started = time.perf_counter()
    data = data or gather(body, mappings, fetcher, result)
    result.timings_ms["read"] = (time.perf_counter() - read_started) * 1000
    cards, rating_actions, clearing_actions = [], [], []
    record = record_facts(data, mappings, as_of)  # read once, shared by every order of the call
    # what the card must say although it is not clinical: resources of another patient left out
    notes = (
        [f"{data.other_patient} resource(s) not of this patient were left out (an EHR or prefetch problem)."]
        if data.other_patient
        else []
    )
    signing = SERVICE_HOOKS[service_id] == "order-sign"
    for order in orders:
        facts = extract_facts(order, data, mappings, as_of, record)
        verdict = decide(facts)
        consult_id = f"urn:uuid:{new_uuid()}"
        print_ = fingerprint(context, order, verdict)
        # Order-sign after the same order-select, unchanged: keep the rating, no second card.
        shown = not (signing and shown_before is not None and shown_before(print_) is True)
        # a date that could not be used (an onset in the future) is said on the card
        unusable = [
            note.split(": ", 1)[-1].replace(": not used", " (a typing error?): not used, correct it in the record")
            for note in verdict.skipped
            if "in the future" in note
        ][:1]
        built = build_card(order, verdict, mappings, consult_id, notes=notes + unusable)
        if evidence_link is not None and shown:
            page = evidence_page(order, verdict, built.card, mappings, as_of)
            built.card["links"] = [
                {
                    "label": "Evidence: findings, codes and the full checklist",
                    "url": evidence_link(page),
                    "type": "absolute",
                }
            ]
        if shown:
            cards.append(built.card)
        if built.rating_action is not None:
            rating_actions.append(built.rating_action)
        if built.clearing_action is not None:
            clearing_actions.append(built.clearing_action)
        result.evaluations.append(
            Evaluation(
                card_uuid=built.card["uuid"],
                consult_id=consult_id,
                order_reference=order.reference,
                region=order.region,
                contrast=order.contrast,
                verdict=verdict.code,
                variant=verdict.variant_id,
                rating=verdict.pama_rating,
                suggestion_kinds=built.suggestion_kinds,
                order_code=order.code,
                red_flags=[e.concept_id for e in verdict.red_flags_found],
                unread_sources=sorted(data.unread),
                override_reasons=built.override_reasons,
                fingerprint=print_,
                card_shown=shown,
            )
        )
    if all(e.verdict == "insufficient-information" for e in result.evaluations) and all(
        key in data.unread for key in CLINICAL_SOURCES
    ):
        # Nothing to judge with: CDS Hooks 2.0 says 412 when the service cannot get the data it needs.
        raise HookRequestError(
            412,
            "the patient's data could be read neither from the prefetch nor from an allowed FHIR server",
            {"missing": dict(sorted(data.unread.items()))},
        )
    result.response = {"cards": cards}
    if rating_actions or clearing_actions:
        # CDS Hooks 2.0 reads top-level systemActions; the CDS Hooks sandbox (Argonaut PAMA IG's
        # first draft) reads extension.systemActions, which carries ratings only (the IG's rule).
        result.response["systemActions"] = rating_actions + clearing_actions
    if rating_actions:
        result.response["extension"] = {"systemActions": rating_actions}
    result.timings_ms["total"] = (time.perf_counter() - started) * 1000
    return result
