"""One hook call, end to end: check the request, find the spine MRI orders, read the data,
decide, and build the CDS Hooks response. HTTP lives in `web`; this module is called by the
server and by `cds-service evaluate` alike.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from ..clinical.facts import extract_facts, find_mri_orders, record_facts
from ..clinical.mappings import Mappings
from ..clinical.record import ClinicalData
from ..clinical.rules import decide
from ..fhir.client import FhirAuthorizationError, FhirFetcher, describe_host, fetchable, log_fetch
from ..fhir.prefetch import from_prefetch
from .cards import build_card
from .discovery import SERVICE_HOOKS, prefetch_templates
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


@dataclass
class HookResult:
    response: dict
    evaluations: list[Evaluation] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


CLINICAL_SOURCES = ("conditions", "observations", "medications", "procedures")


def gather(body: dict, mappings: Mappings, fetcher: FhirFetcher | None, result: HookResult) -> ClinicalData:
    """Prefetch first; what it lacks, from the EHR's FHIR server when that server is allowed."""
    data = from_prefetch(body.get("prefetch"))
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


def evaluate_hook(
    service_id: str,
    body: dict,
    mappings: Mappings,
    as_of: date | None = None,
    data: ClinicalData | None = None,
    fetcher: FhirFetcher | None = None,
) -> HookResult:
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
    for order in orders:
        facts = extract_facts(order, data, mappings, as_of, record)
        verdict = decide(facts)
        consult_id = f"urn:uuid:{new_uuid()}"
        built = build_card(order, verdict, mappings, consult_id)
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
