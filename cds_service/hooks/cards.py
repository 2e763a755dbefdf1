"""The CDS Hooks contract: a verdict becomes a card, suggestions and a PAMA rating systemAction.

Nothing clinical is decided here; wording only. Codes for suggested orders come from
mappings/orders.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..clinical.mappings import Mappings, bounded_put
from ..clinical.model import FROM_ORDER, MriOrder, Verdict
from ..clinical.rules import format_weeks
from .ids import new_uuid

VERDICT_SYSTEM = "http://spine-imaging-cds.org/fhir/CodeSystem/mri-verdict"
OVERRIDE_SYSTEM = "http://spine-imaging-cds.org/fhir/CodeSystem/override-reason"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
# The Argonaut IG names StructureDefinition URLs; the CDS Hooks sandbox reads ".../Extension/...".
PAMA_URLS = {
    "rating": (
        "http://fhir.org/argonaut/StructureDefinition/pama-rating",
        "http://fhir.org/argonaut/Extension/pama-rating",
    ),
    "consult-id": (
        "http://fhir.org/argonaut/StructureDefinition/pama-rating-consult-id",
        "http://fhir.org/argonaut/Extension/pama-rating-consult-id",
    ),
    "auc-applied": (
        "http://fhir.org/argonaut/StructureDefinition/pama-rating-auc-applied",
        "http://fhir.org/argonaut/Extension/pama-rating-auc-applied",
    ),
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
# The card stays short whatever the record holds: at most this many items per list, then
# "and N more"; record strings are cut at a length no coded display needs.
MAX_ITEMS_SHOWN = 8
MAX_TEXT_CHARS = 200

# Text from the record (displays, ids, server messages) is data, never markup: CommonMark lets
# any ASCII punctuation be backslash-escaped, and an escaped "<" or "[" can open neither an HTML
# tag nor a link, an escaped ":" or "@" no autolinked URL or e-mail address (GFM), so links in a
# card can only come from the service's own mappings.
_MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]<>|~#!{}:@])")
_WWW = re.compile(r"(?i)\b(www)\.")  # GFM links "www.example.org" too
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def _clean(text, limit: int = MAX_TEXT_CHARS) -> str:
    text = _CONTROL.sub(" ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def md(text, limit: int = MAX_TEXT_CHARS * 2) -> str:
    """A string as literal markdown text: one line, markup characters escaped."""
    key = (text, limit) if isinstance(text, str) else None
    escaped = _ESCAPED.get(key) if key is not None else None
    if escaped is None:
        escaped = _WWW.sub(r"\1\\.", _MARKDOWN_ACTIVE.sub(r"\\\1", _clean(text, limit)))
        if key is not None:
            bounded_put(_ESCAPED, key, escaped, ESCAPED_CACHE_SIZE)
    return escaped


# Most of a card's text is the same from card to card (labels, reasons, guideline names): escaped
# once. Bounded: record text varies without end.
ESCAPED_CACHE_SIZE = 20_000
_ESCAPED: dict[tuple[str, int], str] = {}


def _json_copy(value):
    """A copy of a JSON tree (dicts, lists, scalars): what copy.deepcopy does, without its memo."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


def plain(text) -> str:
    """A string for a plain-text field (the summary): one line, no characters that markup could use."""
    return re.sub(r"[<>\[\]`]", "", _clean(text, SUMMARY_LIMIT * 2))


def _bullets(items, render=md) -> list[str]:
    shown = [f"- {render(item)}" for item in items[:MAX_ITEMS_SHOWN]]
    if len(items) > MAX_ITEMS_SHOWN:
        shown.append(f"- … and {len(items) - MAX_ITEMS_SHOWN} more")
    return shown


def _summary(verdict: Verdict) -> str:
    first_study = "CT" if verdict.suggest_first_study == "ct" else "Radiographs"
    lead = {
        "indicated-urgent": "MRI indicated urgently: ",
        "indicated-routine": "MRI indicated: ",
        "radiographs-first": f"{first_study} first, not MRI: ",
        "low-value": "Low-value MRI: ",
        "insufficient-information": "Cannot rate this MRI: ",
    }[verdict.code]
    text = lead + plain(verdict.decisive_reason)
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
    return f"**{md(item.label)}**: {md(item.description)} ({md(item.reference)}, {where}{when})"


def _detail(order: MriOrder, verdict: Verdict, mappings: Mappings) -> str:
    lines = [f"**{VERDICT_DISPLAY[verdict.code]}.** Order: {md(order.display)} ({md(order.reference)}).", ""]
    lines += _bullets(verdict.reasons)
    lines.append("")
    if verdict.advice:
        lines += [f"**Instead:** {md(verdict.advice)}", ""]
    if verdict.red_flags_found:
        lines.append("**Red flags and risk factors found**")
        lines += _bullets(verdict.red_flags_found, _evidence_line)
        lines.append("")
    if verdict.red_flags_not_relevant:
        lines.append("**Found, not relevant to this study**")
        lines += _bullets(
            verdict.red_flags_not_relevant,
            lambda pair: f"**{md(pair[0].label)}**: {md(pair[0].description)} ({md(pair[0].reference)}): {md(pair[1])}",
        )
        lines.append("")
    if verdict.red_flags_absent:
        lines.append("**Checked and not found:** " + ", ".join(md(label) for label in verdict.red_flags_absent) + ".")
        lines.append("")
    if verdict.prior_imaging:
        lines.append("**Prior imaging of this region (last 12 months)**")
        lines += _bullets(verdict.prior_imaging)
        lines.append("")
    lines.append(
        "**Episode:** "
        + (
            f"{format_weeks(verdict.episode_weeks)} since the earliest dated symptom"
            if verdict.episode_weeks is not None
            else "duration not documented"
        )
    )
    lines += _bullets(verdict.episode_evidence, _evidence_line)
    lines.append("")
    lines.append(
        "**Conservative therapy:** "
        + (
            f"started {format_weeks(verdict.therapy_weeks)} ago"
            if verdict.therapy_weeks is not None
            else ("documented without dates" if verdict.therapy_evidence else "none documented")
        )
    )
    lines += _bullets(verdict.therapy_evidence)
    lines.append("")
    if verdict.would_change:
        lines.append("**What would change this advice**")
        lines += _bullets(verdict.would_change)
        lines.append("")
    if verdict.not_documented:
        lines.append("**Not documented, needed to rate this order**")
        lines += _bullets(verdict.not_documented)
        lines.append("")
    if verdict.missing:
        lines.append("**Data that could not be read**")
        lines += _bullets(verdict.missing)
        lines.append("")
    if verdict.skipped:
        lines.append("**Not used**")
        lines += _bullets(verdict.skipped)
        lines.append("")
    if verdict.guideline_ids:
        cited = [mappings.guideline(g).get("short", g) for g in verdict.guideline_ids]
        lines.append("**Concordant guidance:** " + "; ".join(md(c) for c in cited) + ".")
    return "\n".join(lines).strip()


def _coding(entry: dict) -> dict:
    coding = {"system": SYSTEM_URIS.get(entry["system"], entry["system"]), "code": str(entry["code"])}
    if entry.get("display"):
        coding["display"] = entry["display"]
    return coding


def pama_extensions(rating: str, verdict_code: str | None, consult_id: str, auc_url: str | None) -> list[dict]:
    """The Argonaut PAMA rating extensions, under both URL families, the Argonaut coding first
    (the CDS Hooks sandbox shows the first coding's code); our finer verdict second when given."""
    value = {"coding": [{"system": PAMA_RATING_SYSTEM, "code": rating}]}
    if verdict_code:
        value["coding"].append(
            {"system": VERDICT_SYSTEM, "code": verdict_code, "display": VERDICT_DISPLAY[verdict_code]}
        )
    extensions = []
    for url in PAMA_URLS["rating"]:
        extensions.append({"url": url, "valueCodeableConcept": _json_copy(value)})
    for url in PAMA_URLS["consult-id"]:
        extensions.append({"url": url, "valueUri": consult_id})
    if auc_url:
        for url in PAMA_URLS["auc-applied"]:
            extensions.append({"url": url, "valueUri": auc_url})
    return extensions


def with_rating(resource: dict, extensions: list[dict]) -> dict:
    """A copy of the order carrying `extensions` as its only PAMA rating (none: the rating is removed)."""
    rated = _json_copy(resource)
    kept = [e for e in rated.get("extension") or [] if isinstance(e, dict) and e.get("url") not in ALL_PAMA_URLS]
    if kept or extensions:
        rated["extension"] = kept + extensions
    else:
        rated.pop("extension", None)
    return rated


def _order_text(codes) -> str | None:
    """The order's name for people: the LOINC display (e.g. "MR Lumbar spine WO contrast") when present."""
    by_system = {c["system"]: c.get("display") for c in codes}
    return by_system.get("loinc") or next((c.get("display") for c in codes if c.get("display")), None)


def _recoded(order: MriOrder, codes: tuple[dict, ...], extensions: list[dict], note: str | None = None) -> dict:
    """The draft order itself (same id, subject, reason) with another study's codes: an `update`,
    which the CDS Hooks sandbox's PAMA view and EHRs apply in place (a delete + create is not
    applied there). The CPT coding stays first: the sandbox shows coding[0] as the study."""
    updated = with_rating(order.resource, extensions)
    updated["code"] = {"coding": [_coding(c) for c in codes if c["system"] in SYSTEM_URIS]}
    text = _order_text(codes)
    if text:
        updated["code"]["text"] = text
    if note:
        updated["note"] = [*list(updated.get("note") or []), {"text": note}]
    return updated


# Suggestion kinds, as the evaluation log records them for utilization analysts.
SUGGEST_FIRST_STUDY = "switch-to-first-study"
SUGGEST_CANCEL = "cancel"
SUGGEST_NO_CONTRAST = "drop-contrast"


def _suggestions(
    order: MriOrder, verdict: Verdict, mappings: Mappings, consult_id: str, auc_url: str | None, rating_extensions
) -> list[tuple[str, dict]]:
    """(kind, suggestion) pairs, the recommended one first."""
    suggestions: list[tuple[str, dict]] = []
    if verdict.suggest_first_study:
        modality = verdict.suggest_first_study
        region = order.region if order.region != "unspecified" else None
        first = mappings.preferred_order(modality, region) if region else None
        if first is not None:
            name = "radiographs" if modality == "radiograph" else "CT without contrast"
            # The guideline variant behind the verdict names this study as the first one: it adheres.
            rating = "no-criteria-apply" if verdict.extrapolated else "appropriate"
            switched = _recoded(
                order,
                first.codes,
                pama_extensions(rating, None, consult_id, auc_url),
                f"Changed by spine-imaging CDS from {order_label(order)}: {name} first.",
            )
            suggestions.append(
                (
                    SUGGEST_FIRST_STUDY,
                    {
                        "label": f"Order {name} of the {region} spine instead of MRI",
                        "uuid": new_uuid(),
                        "isRecommended": True,
                        "actions": [
                            {
                                "type": "update",
                                "description": f"Change the draft order from {order_label(order)} "
                                f"to {name} of the {region} spine.",
                                "resource": switched,
                            }
                        ],
                    },
                )
            )
    if verdict.suggest_cancel:
        # Removing a draft is what no update can say: CDS Hooks' delete (which the sandbox's PAMA
        # view does not apply; EHRs do).
        suggestions.append(
            (
                SUGGEST_CANCEL,
                {
                    "label": "Cancel the MRI order",
                    "uuid": new_uuid(),
                    "isRecommended": not suggestions,
                    "actions": [
                        {
                            "type": "delete",
                            "description": f"Remove the draft order for {order_label(order)}.",
                            "resourceId": order.reference,
                        }
                    ],
                },
            )
        )
    if (
        verdict.code.startswith("indicated-")
        and order.contrast in ("with", "with-and-without")
        and not verdict.contrast_needed
    ):
        without = mappings.mri_order(order.region, "without")
        if without is not None:
            suggestions.append(
                (
                    SUGGEST_NO_CONTRAST,
                    {
                        "label": f"Change to MRI {order.region} spine without contrast",
                        "uuid": new_uuid(),
                        "isRecommended": True,
                        "actions": [
                            {
                                "type": "update",
                                "description": "No infection or tumour flag needs contrast: "
                                "order the MRI without contrast.",
                                "resource": _recoded(order, without.codes, rating_extensions or []),
                            }
                        ],
                    },
                )
            )
    return suggestions


@dataclass
class CardResult:
    card: dict
    rating_action: dict | None  # the PAMA rating systemAction (Argonaut and CDS Hooks 2.0 lists)
    clearing_action: dict | None  # no rating: an update that removes an earlier one (CDS Hooks 2.0 list only)
    suggestion_kinds: dict[str, str]  # suggestion uuid -> SUGGEST_* kind
    override_reasons: dict[str, str]  # the override reason codes this card offers -> their display


def build_card(order: MriOrder, verdict: Verdict, mappings: Mappings, consult_id: str) -> CardResult:
    """The card for one order and its systemAction: the rating, or the removal of a stale one."""
    source = _source(verdict, mappings)
    rating_extensions = None
    rating_action = clearing_action = None
    if verdict.pama_rating:
        rating_extensions = pama_extensions(verdict.pama_rating, verdict.code, consult_id, source.get("url"))
        rating_action = {
            "type": "update",
            "description": f"PAMA rating for {order_label(order)}: {verdict.pama_rating} ({verdict.code}).",
            "resource": with_rating(order.resource, rating_extensions),
        }
    else:
        # The Argonaut PAMA IG forbids a rating action for an order it cannot rate, but an EHR
        # must not keep an earlier rating of this order either: CDS Hooks 2.0 gets the order
        # back without one.
        clearing_action = {
            "type": "update",
            "description": f"No PAMA rating for {order_label(order)} ({verdict.code}): "
            "any earlier rating of this order is removed.",
            "resource": with_rating(order.resource, []),
        }
    card = {
        "uuid": new_uuid(),
        "summary": _summary(verdict),
        "indicator": INDICATOR.get(verdict.code, "info"),
        "detail": _detail(order, verdict, mappings),
        "source": source,
    }
    suggestions = _suggestions(order, verdict, mappings, consult_id, source.get("url"), rating_extensions)
    reasons: list[tuple[str, str]] = []
    if suggestions:
        card["suggestions"] = [suggestion for _, suggestion in suggestions]
        card["selectionBehavior"] = "at-most-one"
        reasons = CONTRAST_OVERRIDE_REASONS if verdict.code.startswith("indicated-") else OVERRIDE_REASONS
        card["overrideReasons"] = [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in reasons
        ]
    return CardResult(
        card,
        rating_action,
        clearing_action,
        {suggestion["uuid"]: kind for kind, suggestion in suggestions},
        dict(reasons),
    )
