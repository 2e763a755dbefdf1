"""The CDS Hooks contract: a verdict becomes a card, suggestions and a PAMA rating systemAction.

Nothing clinical is decided here; wording only. Codes for suggested orders come from
mappings/orders.yaml.
"""
from __future__ import annotations

import copy
import uuid

from .mappings import Mappings
from .model import FROM_ORDER, MriOrder, Verdict
from .rules import format_weeks

VERDICT_SYSTEM = "http://spine-imaging-cds.org/fhir/CodeSystem/mri-verdict"
OVERRIDE_SYSTEM = "http://spine-imaging-cds.org/fhir/CodeSystem/override-reason"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
# The Argonaut IG names StructureDefinition URLs; the CDS Hooks sandbox reads ".../Extension/...".
PAMA_URLS = {
    "rating": ("http://fhir.org/argonaut/StructureDefinition/pama-rating",
               "http://fhir.org/argonaut/Extension/pama-rating"),
    "consult-id": ("http://fhir.org/argonaut/StructureDefinition/pama-rating-consult-id",
                   "http://fhir.org/argonaut/Extension/pama-rating-consult-id"),
    "auc-applied": ("http://fhir.org/argonaut/StructureDefinition/pama-rating-auc-applied",
                    "http://fhir.org/argonaut/Extension/pama-rating-auc-applied"),
}
ALL_PAMA_URLS = {url for pair in PAMA_URLS.values() for url in pair}
SYSTEM_URIS = {
    "cpt": "http://www.ama-assn.org/go/cpt",
    "loinc": "http://loinc.org",
    "snomed": "http://snomed.info/sct",
}
VERDICT_DISPLAY = {
    "indicated-urgent": "MRI indicated, urgent",
    "indicated-routine": "MRI indicated",
    "radiographs-first": "Another study first (radiographs or CT)",
    "low-value": "Low-value MRI",
    "insufficient-information": "Insufficient information to rate",
}
INDICATOR = {
    "indicated-urgent": "critical",
    "low-value": "warning",
    "radiographs-first": "warning",
}
CONTRAST_WORDS = {
    "without": "without contrast",
    "with": "with contrast",
    "with-and-without": "without and with contrast",
    "unspecified": "",
}
OVERRIDE_REASONS = [
    ("red-flag-not-in-record", "Red flag present, not yet documented in the record"),
    ("surgical-candidate", "Surgical or interventional candidate (planning)"),
    ("therapy-not-in-record", "Conservative therapy done, not in the record"),
    ("specialist-request", "Requested by a spine specialist"),
    ("prior-imaging-elsewhere", "Radiographs or CT already done elsewhere"),
]
CONTRAST_OVERRIDE_REASONS = [
    ("contrast-indicated", "Contrast needed for an indication not in the record"),
    ("specialist-request", "Requested by a spine specialist"),
]
SUMMARY_LIMIT = 140
MAX_SKIPPED_SHOWN = 8  # the card stays short; the log has them all


def _summary(verdict: Verdict) -> str:
    first_study = "CT" if verdict.suggest_first_study == "ct" else "Radiographs"
    lead = {
        "indicated-urgent": "MRI indicated urgently: ",
        "indicated-routine": "MRI indicated: ",
        "radiographs-first": f"{first_study} first, not MRI: ",
        "low-value": "Low-value MRI: ",
        "insufficient-information": "Cannot rate this MRI: ",
    }[verdict.code]
    text = lead + verdict.decisive_reason
    # CDS Hooks: the summary is "less than 140 characters".
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2].rstrip() + "…"


def order_label(order: MriOrder) -> str:
    contrast = CONTRAST_WORDS.get(order.contrast, "")
    region = order.region if order.region not in ("multi", "unspecified") else "spine"
    return f"MRI {region} spine {contrast}".replace("spine spine", "spine").strip()


def _source(verdict: Verdict, mappings: Mappings) -> dict:
    if verdict.variant_id:
        guideline, variant = mappings.variant(verdict.variant_id)
        # The short name keeps the card readable; the URL leads to the full guideline.
        label = f"{guideline.get('short', guideline['id'])}: {variant.get('title', variant['id'])}"
        if verdict.extrapolated and "analogy" not in label:
            label += " (applied by analogy to the thoracic spine)"
        return {"label": label, "url": guideline.get("url")} if guideline.get("url") else {"label": label}
    return {"label": "spine-imaging CDS: ACR Appropriateness Criteria, ACP, Choosing Wisely, NICE NG59"}


def _evidence_line(item) -> str:
    where = "from the order's reason" if item.origin == FROM_ORDER else "from the record"
    when = f", {item.date.isoformat()}" if item.date else ""
    return f"- **{item.label}**: {item.description} ({item.reference}, {where}{when})"


def _detail(order: MriOrder, verdict: Verdict, mappings: Mappings) -> str:
    lines = [f"**{VERDICT_DISPLAY[verdict.code]}.** Order: {order.display} ({order.reference}).", ""]
    lines += [f"- {reason}" for reason in verdict.reasons]
    lines.append("")
    if verdict.advice:
        lines += [f"**Instead:** {verdict.advice}", ""]
    if verdict.red_flags_found:
        lines.append("**Red flags and risk factors found**")
        lines += [_evidence_line(item) for item in verdict.red_flags_found]
        lines.append("")
    if verdict.red_flags_not_relevant:
        lines.append("**Found, not relevant to this study**")
        lines += [f"- **{item.label}**: {item.description} ({item.reference}): {why}"
                  for item, why in verdict.red_flags_not_relevant]
        lines.append("")
    if verdict.red_flags_absent:
        lines.append("**Checked and not found:** " + ", ".join(verdict.red_flags_absent) + ".")
        lines.append("")
    if verdict.prior_imaging:
        lines.append("**Prior imaging of this region (last 12 months)**")
        lines += [f"- {study}" for study in verdict.prior_imaging]
        lines.append("")
    lines.append("**Episode:** " + (
        f"{format_weeks(verdict.episode_weeks)} since the earliest dated symptom"
        if verdict.episode_weeks is not None else "duration not documented"
    ))
    lines += [_evidence_line(item) for item in verdict.episode_evidence]
    lines.append("")
    lines.append("**Conservative therapy:** " + (
        f"started {format_weeks(verdict.therapy_weeks)} ago" if verdict.therapy_weeks is not None
        else ("documented without dates" if verdict.therapy_evidence else "none documented")
    ))
    lines += [f"- {item}" for item in verdict.therapy_evidence]
    lines.append("")
    if verdict.would_change:
        lines.append("**What would change this advice**")
        lines += [f"- {item}" for item in verdict.would_change]
        lines.append("")
    if verdict.missing:
        lines.append("**Data that could not be read:** " + "; ".join(verdict.missing) + ".")
        lines.append("")
    if verdict.skipped:
        shown = verdict.skipped[:MAX_SKIPPED_SHOWN]
        more = len(verdict.skipped) - len(shown)
        lines.append("**Not used:** " + "; ".join(shown) + (f"; and {more} more" if more > 0 else "") + ".")
        lines.append("")
    if verdict.guideline_ids:
        cited = [mappings.guideline(g).get("short", g) for g in verdict.guideline_ids]
        lines.append("**Concordant guidance:** " + "; ".join(cited) + ".")
    return "\n".join(lines).strip()


def _coding(entry: dict) -> dict:
    coding = {"system": SYSTEM_URIS.get(entry["system"], entry["system"]), "code": str(entry["code"])}
    if entry.get("display"):
        coding["display"] = entry["display"]
    return coding


def pama_extensions(rating: str, verdict_code: str, consult_id: str, auc_url: str | None) -> list[dict]:
    """The Argonaut PAMA rating extensions, under both URL families, the Argonaut coding first."""
    value = {"coding": [
        {"system": PAMA_RATING_SYSTEM, "code": rating},
        {"system": VERDICT_SYSTEM, "code": verdict_code, "display": VERDICT_DISPLAY[verdict_code]},
    ]}
    extensions = []
    for url in PAMA_URLS["rating"]:
        extensions.append({"url": url, "valueCodeableConcept": copy.deepcopy(value)})
    for url in PAMA_URLS["consult-id"]:
        extensions.append({"url": url, "valueUri": consult_id})
    if auc_url:
        for url in PAMA_URLS["auc-applied"]:
            extensions.append({"url": url, "valueUri": auc_url})
    return extensions


def with_rating(resource: dict, extensions: list[dict]) -> dict:
    rated = copy.deepcopy(resource)
    kept = [e for e in rated.get("extension") or [] if isinstance(e, dict) and e.get("url") not in ALL_PAMA_URLS]
    rated["extension"] = kept + extensions
    return rated


def _order_text(codes) -> str | None:
    """The order's name for people: the LOINC display (e.g. "MR Lumbar spine WO contrast") when present."""
    by_system = {c["system"]: c.get("display") for c in codes}
    return by_system.get("loinc") or next((c.get("display") for c in codes if c.get("display")), None)


def _new_order(order: MriOrder, codes: tuple[dict, ...], modality: str) -> dict:
    source = order.resource
    created = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": source.get("intent") or "order",
        "code": {"coding": [_coding(c) for c in codes if c["system"] in SYSTEM_URIS]},
    }
    text = _order_text(codes)
    if text:
        created["code"]["text"] = text
    for field in ("subject", "encounter", "requester", "reasonCode", "reasonReference"):
        if source.get(field):
            created[field] = copy.deepcopy(source[field])
    created["note"] = [{"text": f"Suggested by spine-imaging CDS in place of {order_label(order)} ({modality} first)."}]
    return created


def _suggestions(order: MriOrder, verdict: Verdict, mappings: Mappings, rating_extensions) -> list[dict]:
    suggestions = []
    delete = {"type": "delete", "description": f"Remove the draft order for {order_label(order)}.",
              "resourceId": order.reference}
    if verdict.suggest_first_study:
        modality = verdict.suggest_first_study
        region = order.region if order.region != "unspecified" else None
        first = mappings.preferred_order(modality, region) if region else None
        if first is not None:
            name = "radiographs" if modality == "radiograph" else "CT without contrast"
            suggestions.append({
                "label": f"Order {name} of the {region} spine instead of MRI",
                "uuid": str(uuid.uuid4()),
                "isRecommended": True,
                "actions": [delete, {"type": "create", "description": f"Order {name} of the {region} spine.",
                                     "resource": _new_order(order, first.codes, name)}],
            })
    if verdict.suggest_cancel:
        suggestions.append({
            "label": "Cancel the MRI order",
            "uuid": str(uuid.uuid4()),
            "isRecommended": not suggestions,
            "actions": [delete],
        })
    if (verdict.code.startswith("indicated-") and order.contrast in ("with", "with-and-without")
            and not verdict.contrast_needed):
        without = mappings.mri_order(order.region, "without")
        if without is not None:
            updated = with_rating(order.resource, rating_extensions or [])
            updated["code"] = {"coding": [_coding(c) for c in without.codes if c["system"] in SYSTEM_URIS]}
            text = _order_text(without.codes)
            if text:
                updated["code"]["text"] = text
            suggestions.append({
                "label": f"Change to MRI {order.region} spine without contrast",
                "uuid": str(uuid.uuid4()),
                "isRecommended": True,
                "actions": [{"type": "update", "description": "No infection or tumour flag needs contrast: "
                             "order the MRI without contrast.", "resource": updated}],
            })
    return suggestions


def build_card(order: MriOrder, verdict: Verdict, mappings: Mappings, consult_id: str) -> tuple[dict, dict | None]:
    """The card for one order and, when a rating can be given, its systemAction."""
    source = _source(verdict, mappings)
    rating_extensions = None
    action = None
    if verdict.pama_rating:
        rating_extensions = pama_extensions(verdict.pama_rating, verdict.code, consult_id, source.get("url"))
        action = {
            "type": "update",
            "description": f"PAMA rating for {order_label(order)}: {verdict.pama_rating} ({verdict.code}).",
            "resource": with_rating(order.resource, rating_extensions),
        }
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(verdict),
        "indicator": INDICATOR.get(verdict.code, "info"),
        "detail": _detail(order, verdict, mappings),
        "source": source,
    }
    suggestions = _suggestions(order, verdict, mappings, rating_extensions)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    reasons = CONTRAST_OVERRIDE_REASONS if verdict.code.startswith("indicated-") else OVERRIDE_REASONS
    if suggestions:
        card["overrideReasons"] = [{"system": OVERRIDE_SYSTEM, "code": code, "display": display}
                                   for code, display in reasons]
    return card, action
