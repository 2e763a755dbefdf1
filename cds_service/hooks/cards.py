"""The CDS Hooks contract: a verdict becomes a card, suggestions and a PAMA rating systemAction.

Nothing clinical is decided here; wording and the actions that carry it out. The card is read in
five seconds: the summary says the clinical picture, the detail is at most 700 characters in a
fixed order (why, what to do now, what to confirm, one source), and everything else (codes,
references, the full checklist, the arithmetic) is on the evidence page its link opens. Codes for
suggested orders come from mappings/orders.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..clinical.mappings import Mappings, bounded_put
from ..clinical.model import MriOrder, Verdict
from ..clinical.rules import pama_rating
from ..clinical.wording import sentence
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
SUMMARY_LEAD = {
    "indicated-urgent": "Urgent MRI",
    "indicated-routine": "MRI indicated",
    "low-value": "Low-value MRI",
    "insufficient-information": "Cannot rate this MRI",
}
STUDY_WORDS = {"radiograph": "radiographs", "ct": "CT without contrast"}
CONTRAST_WORDS = {
    "without": "without contrast",
    "with": "with contrast",
    "with-and-without": "without and with contrast",
    "unspecified": "",
}
OTHER = ("other", "Other reason")
# Override reasons by the verdict's kind (Verdict.override_set): each fits what the card says,
# and "other" is always there. Feedback may name only the reasons its card offered.
OVERRIDE_SETS: dict[str, list[tuple[str, str]]] = {
    "urgent": [("not-current", "This finding is not current"), ("imaged-elsewhere", "Imaged elsewhere today")],
    "deficit": [("deficit-old-stable", "Weakness is old and stable (examined)")],
    "low-value": [
        ("red-flag-not-in-record", "Red flag present, not yet documented in the record"),
        ("therapy-not-in-record", "Conservative therapy done, not in the record"),
        ("surgical-candidate", "Surgical or interventional candidate (planning)"),
        ("specialist-request", "Requested by a spine specialist"),
    ],
    "first-study": [
        ("prior-imaging-elsewhere", "Radiographs or CT already done elsewhere"),
        ("red-flag-not-in-record", "Red flag present, not yet documented in the record"),
        ("specialist-request", "Requested by a spine specialist"),
    ],
    "trauma": [
        ("neuro-deficit", "Neurological deficit on examination"),
        ("ct-done", "CT already done"),
        ("ligament-injury", "Suspected ligament injury"),
    ],
    "fracture": [
        ("augmentation-planned", "Vertebral augmentation planned"),
        ("neuro-deficit", "Neurological deficit on examination"),
    ],
    "contrast": [
        ("post-operative-spine", "Post-operative spine: contrast needed"),
        ("contrast-indicated", "Contrast needed for an indication not in the record"),
        ("specialist-request", "Requested by a spine specialist"),
    ],
    "follow-up": [("clinical-change", "Clinical change: worse pain, fever, rising markers or a deficit")],
    "repeat": [("new-symptoms", "New or progressing symptoms since the last MRI")],
}
SUMMARY_LIMIT = 140  # CDS Hooks: the summary is "less than 140 characters"
DETAIL_LIMIT = 700  # characters of rendered text (issue 16: read in five seconds)
CONFIRM_SHOWN = 5
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


def _summary(verdict: Verdict, already_urgent: bool = False) -> str:
    """The clinical picture in plain words behind the verdict's lead, under 140 characters.

    The lead never contradicts the source line: where ACR rates the MRI as ordered "may be
    appropriate", a first study is "first", not "not MRI", and a low-value MRI "can wait"."""
    adherent = verdict.pama_rating == "appropriate"
    study = "CT" if verdict.first_study == "ct" else "Radiographs"
    if verdict.doubts or verdict.ask_if_new:
        lead = "Check first"
    elif verdict.code == "radiographs-first":
        lead = f"{study} first" + ("" if adherent else ", not MRI")
    elif verdict.code == "indicated-routine" and verdict.first_study:
        lead = f"{study} first, MRI also appropriate"
    elif verdict.code == "low-value" and adherent:
        lead = "MRI can wait"
    elif already_urgent:
        lead = "Urgent MRI (already so ordered)"
    else:
        lead = SUMMARY_LEAD[verdict.code]
    text = f"{lead}: {plain(verdict.picture)}"
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2].rstrip(" ,;:") + "…"


def order_label(order: MriOrder) -> str:
    contrast = CONTRAST_WORDS.get(order.contrast, "")
    region = order.region if order.region not in ("multi", "unspecified") else "spine"
    return f"MRI {region} spine {contrast}".replace("spine spine", "spine").strip()


def _source(verdict: Verdict, mappings: Mappings) -> dict:
    """The one source: the guideline variant behind the verdict, and ACR's rating of the study ordered."""
    if verdict.variant_id:
        guideline, variant = mappings.variant(verdict.variant_id)
        # The short name keeps the card readable; the URL leads to the full guideline.
        label = f"{guideline.get('short', guideline['id'])}, {variant.get('title', variant['id'])}"
        if verdict.acr_rating:
            label += f" (MRI as ordered: {verdict.acr_rating.replace('-', ' ')})"
        if verdict.extrapolated and "analogy" not in label:
            label += " (applied by analogy to the thoracic spine)"
        return {"label": label, "url": guideline.get("url")} if guideline.get("url") else {"label": label}
    if verdict.guideline_ids:  # no variant (the rule needs data the record lacks): the rule's guideline
        cited = mappings.guideline(verdict.guideline_ids[0])
        name = str(cited.get("short", cited["id"]))
        return {"label": name, "url": cited["url"]} if cited.get("url") else {"label": name}
    return {"label": "ACR Appropriateness Criteria, ACP, Choosing Wisely, NICE"}


def rendered_length(detail: str) -> int:
    """Characters a reader sees of a markdown detail: without emphasis marks and escapes."""
    return len(re.sub(r"\\(.)", r"\1", detail.replace("**", "")))


def _contrast_line(verdict: Verdict, order: MriOrder) -> str:
    if not verdict.code.startswith("indicated-") or verdict.contrast is None:
        return ""
    wanted = CONTRAST_WORDS[verdict.contrast]
    if order.contrast == verdict.contrast:
        return f"Contrast: {wanted}, as ordered ({verdict.contrast_reason})." if verdict.contrast_reason else ""
    return f"Contrast: {wanted}" + (f" ({verdict.contrast_reason})" if verdict.contrast_reason else "") + "."


def _detail(order: MriOrder, verdict: Verdict, source: dict, notes: list[str]) -> str:
    """Why, what to do now, what to confirm, one source: at most DETAIL_LIMIT characters as read.

    Lists are shortened from their end until the detail fits; what is cut stays on the evidence page."""
    why, confirm = list(verdict.why), list(verdict.confirm)[:CONFIRM_SHOWN]
    now = " ".join(part for part in (verdict.now or "", _contrast_line(verdict, order)) if part)

    def build() -> str:
        lines = [f"**Why:** {md(sentence(why))}"] if why else []
        if now:
            lines.append(f"**Now:** {md(now)}")
        if confirm:
            lines.append(f"**Confirm:** {md(sentence(confirm))}")
        lines += [f"**Note:** {md(note)}" for note in notes]
        lines.append(f"**Source:** {md(source['label'], 300)}")
        return "\n\n".join(lines)

    detail = build()
    # Cut from the least needed: the last questions to confirm, then the last items of a long
    # "not in the record" list, and only then the findings behind the verdict.
    while rendered_length(detail) > DETAIL_LIMIT:
        if len(confirm) > 1:
            confirm.pop()
        elif confirm and "; " in confirm[-1]:
            confirm[-1] = confirm[-1].rsplit("; ", 1)[0]
        elif len(why) > 1:
            why.pop()
        else:
            break
        detail = build()
    if rendered_length(detail) > DETAIL_LIMIT:
        notes = []
        detail = build()
    return detail


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
SUGGEST_ADD_CONTRAST = "add-contrast"
SUGGEST_URGENT = "make-urgent"
SUGGEST_KEEP_ROUTINE = "keep-routine"
SUGGEST_NEXT_STEP = "next-step"


def _suggestion(label: str, actions: list[dict], recommended: bool | None = None) -> dict:
    suggestion: dict = {"label": label, "uuid": new_uuid()}
    if recommended is not None:
        suggestion["isRecommended"] = recommended
    suggestion["actions"] = actions
    return suggestion


def _rated(
    order: MriOrder, codes: tuple[dict, ...] | None, rating: str | None, card: CardContext, mri: bool = True
) -> dict:
    """The draft order, recoded to `codes` when given, carrying `rating` (None: no rating); an MRI
    also carries the verdict behind the rating (another study is not what the verdict rated)."""
    verdict = card.verdict.code if mri else None
    extensions = pama_extensions(rating, verdict, card.consult_id, card.auc_url) if rating else []
    return _recoded(order, codes, extensions) if codes else with_rating(order.resource, extensions)


@dataclass
class CardContext:
    """What the suggestions of one card share."""

    order: MriOrder
    verdict: Verdict
    mappings: Mappings
    consult_id: str
    auc_url: str | None
    rating_extensions: list[dict]


def _rating_of(card: CardContext, study: str) -> str | None:
    verdict = card.verdict
    no_criteria = verdict.extrapolated or verdict.no_acr_criteria
    return pama_rating(verdict.code, verdict.variant_id, study, no_criteria, card.mappings.acr_ratings)[0]


def _contrast_change(card: CardContext) -> tuple[str, str] | None:
    """(kind, contrast) when the order's contrast is not what the indication wants. A contrast-only
    order becomes without-and-with (ACR rates contrast-only MRI usually not appropriate)."""
    verdict, order = card.verdict, card.order
    if not verdict.code.startswith("indicated-") or order.region in ("multi", "unspecified"):
        return None
    wanted = verdict.contrast or ("with-and-without" if order.contrast == "with" else None)
    if wanted is None or wanted == order.contrast:
        return None
    return (SUGGEST_NO_CONTRAST if wanted == "without" else SUGGEST_ADD_CONTRAST), wanted


def _escalation(card: CardContext) -> list[tuple[str, dict]]:
    """An urgent card's first suggestion makes the order urgent (with the contrast the indication
    wants); then the next step the guideline names."""
    verdict, order = card.verdict, card.order
    found: list[tuple[str, dict]] = []
    change = _contrast_change(card)
    if verdict.priority:
        resource = _rated(order, None, verdict.pama_rating, card)
        label = f"Make this MRI {verdict.priority}"
        if change:
            target = card.mappings.mri_order(order.region, change[1])
            if target is not None:
                resource = _rated(order, target.codes, _rating_of(card, f"mri-{change[1]}"), card)
                label += f", {CONTRAST_WORDS[change[1]]}"
        resource["priority"] = verdict.priority
        found.append(
            (
                SUGGEST_URGENT,
                _suggestion(
                    label,
                    [
                        {
                            "type": "update",
                            "description": f"Set the draft order's priority to {verdict.priority}.",
                            "resource": resource,
                        }
                    ],
                    True,
                ),
            )
        )
    elif change:
        # Already as urgent as asked: the contrast the indication wants is still to change.
        contrast = _contrast_suggestion(card, change)
        if contrast is not None:
            found.append(contrast)
    for step in verdict.next_steps:
        actions = _next_step_actions(card, step.kind)
        if actions:
            found.append((SUGGEST_NEXT_STEP, _suggestion(step.text[:1].upper() + step.text[1:], actions, True)))
    return found


def _contrast_suggestion(card: CardContext, change: tuple[str, str]) -> tuple[str, dict] | None:
    """The order changed to the contrast the indication wants: recommended, unless ACR rates both."""
    verdict, order = card.verdict, card.order
    kind, contrast = change
    target = card.mappings.mri_order(order.region, contrast)
    if target is None:
        return None
    why = f" ({verdict.contrast_reason})" if verdict.contrast_reason else ""
    return (
        kind,
        _suggestion(
            f"Change to MRI {order.region} spine {CONTRAST_WORDS[contrast]}{why}",
            [
                {
                    "type": "update",
                    "description": f"Order the MRI {CONTRAST_WORDS[contrast]}{why}.",
                    "resource": _rated(order, target.codes, _rating_of(card, f"mri-{contrast}"), card),
                }
            ],
            not verdict.contrast_optional,
        ),
    )


def _next_step_actions(card: CardContext, kind: str) -> list[dict]:
    """Draft orders for a next step whose codes the mappings hold (none: the card says it in words)."""
    order = card.order.resource
    if card.order.region in ("multi", "unspecified") and kind in ("lumbar-spine", "whole-spine"):
        return []  # the order already covers more than one region: nothing to add
    if kind == "lumbar-spine":
        target = card.mappings.mri_order("lumbar", "without")
        if target is None or card.order.region == "lumbar":
            return []
        return [
            {
                "type": "create",
                "description": "Add MRI of the lumbar spine without contrast (cauda equina).",
                "resource": _new_request(order, target.codes, card.verdict.priority or "stat"),
            }
        ]
    if kind == "whole-spine":
        others = [region for region in ("cervical", "thoracic", "lumbar") if region != card.order.region]
        targets = [card.mappings.mri_order(region, "with-and-without") for region in others]
        return [
            {
                "type": "create",
                "description": f"Add MRI of the {region} spine without and with contrast.",
                "resource": _new_request(order, target.codes, card.verdict.priority),
            }
            for region, target in zip(others, targets, strict=True)
            if target is not None
        ]
    target = card.mappings.next_step_order(kind)
    if target is None:
        return []
    return [
        {
            "type": "create",
            "description": f"Add the order: {_order_text(target.codes) or kind}.",
            "resource": _new_request(order, target.codes, card.verdict.priority),
        }
    ]


def _new_request(draft: dict, codes: tuple[dict, ...], priority: str | None) -> dict:
    """A new draft ServiceRequest for the same patient and encounter as the MRI order."""
    request: dict = {"resourceType": "ServiceRequest", "id": new_uuid(), "status": "draft", "intent": "order"}
    request["code"] = {"coding": [_coding(c) for c in codes if c["system"] in SYSTEM_URIS]}
    text = _order_text(codes)
    if text:
        request["code"]["text"] = text
    for key in ("subject", "encounter"):
        if isinstance(draft.get(key), dict):
            request[key] = _json_copy(draft[key])
    if priority:
        request["priority"] = priority
    return request


def _new_or_old(card: CardContext) -> list[tuple[str, dict]]:
    """The clinician's answer, one click each, for a finding the record cannot date. New: the
    order made as urgent as it asks. Old and stable: what the verdict is without it (cancel when
    nothing else calls for the MRI, else keep it routine), neither recommended."""
    verdict, order = card.verdict, card.order
    what = verdict.ask_what
    new = with_rating(order.resource, card.rating_extensions)
    new["priority"] = verdict.priority_if_new
    found = [
        (
            SUGGEST_URGENT,
            _suggestion(
                f"New or worsening {what}: make this MRI {verdict.priority_if_new}",
                [
                    {
                        "type": "update",
                        "description": f"Set the draft order's priority to {verdict.priority_if_new}.",
                        "resource": new,
                    }
                ],
            ),
        )
    ]
    old_code, _, old_rating = verdict.if_old or ("indicated-routine", "", verdict.pama_rating)
    if old_code in ("low-value", "radiographs-first"):
        found.append(
            (
                SUGGEST_CANCEL,
                _suggestion(
                    f"Old and stable {what}: cancel the MRI (nothing else calls for it)",
                    [
                        {
                            "type": "delete",
                            "description": f"Remove the draft order for {order_label(order)}.",
                            "resourceId": order.reference,
                        }
                    ],
                ),
            )
        )
        return found
    extensions = pama_extensions(old_rating, old_code, card.consult_id, card.auc_url) if old_rating else []
    routine = with_rating(order.resource, extensions)
    routine["priority"] = "routine"
    found.append(
        (
            SUGGEST_KEEP_ROUTINE,
            _suggestion(
                f"Old and stable {what}: keep it routine",
                [{"type": "update", "description": "Keep the draft order's priority routine.", "resource": routine}],
            ),
        )
    )
    return found


def _suggestions(card: CardContext) -> tuple[list[tuple[str, dict]], str]:
    """(kind, suggestion) pairs, the recommended first, and the card's selectionBehavior."""
    verdict, order, mappings = card.verdict, card.order, card.mappings
    if verdict.code == "indicated-urgent":
        return _escalation(card), "any"
    if verdict.ask_if_new:
        return _new_or_old(card), "at-most-one"
    found: list[tuple[str, dict]] = []
    region = order.region if order.region not in ("multi", "unspecified") else None
    if verdict.first_study and region:
        first = mappings.preferred_order(verdict.first_study, region)
        if first is not None:
            name = STUDY_WORDS[verdict.first_study]
            study = "radiograph" if verdict.first_study == "radiograph" else "ct-without"
            # PAMA covers advanced imaging only: an order switched to radiographs carries no rating.
            switched = _rated(order, first.codes, _rating_of(card, study), card, mri=False)
            switched["note"] = [
                *list(switched.get("note") or []),
                {"text": f"Changed by spine-imaging CDS from {order_label(order)}: {name} first."},
            ]
            # Labelled by what it does: the draft MRI becomes the first study.
            then = "instead of MRI" if verdict.first_study_required else "MRI later if needed"
            found.append(
                (
                    SUGGEST_FIRST_STUDY,
                    _suggestion(
                        f"Change to {name} of the {region} spine ({then})",
                        [
                            {
                                "type": "update",
                                "description": f"Change the draft order from {order_label(order)} to {name} "
                                f"of the {region} spine.",
                                "resource": switched,
                            }
                        ],
                        verdict.first_study_required and not verdict.doubts,
                    ),
                )
            )
    change = _contrast_change(card)
    contrast = _contrast_suggestion(card, change) if change is not None else None
    if contrast is not None:
        found.append(contrast)
    if verdict.if_confirmed:
        # The doubt's answer, one click: confirmed, the order is made as urgent as it asks (and
        # leaves unrated: the order-sign evaluation rates it with the finding in the record).
        confirmed = with_rating(order.resource, [])
        confirmed["priority"] = verdict.if_confirmed
        found.insert(
            0,
            (
                SUGGEST_URGENT,
                _suggestion(
                    f"Confirmed: make this MRI {verdict.if_confirmed}",
                    [
                        {
                            "type": "update",
                            "description": f"Set the draft order's priority to {verdict.if_confirmed}.",
                            "resource": confirmed,
                        }
                    ],
                    False,
                ),
            ),
        )
    if verdict.suggest_cancel and (found or not verdict.first_study):
        # Removing a draft is what no update can say: CDS Hooks' delete (which the sandbox's PAMA
        # view does not apply; EHRs do). Never the only button of a first-study card (C18).
        found.append(
            (
                SUGGEST_CANCEL,
                _suggestion(
                    "Cancel the MRI order",
                    [
                        {
                            "type": "delete",
                            "description": f"Remove the draft order for {order_label(order)}.",
                            "resourceId": order.reference,
                        }
                    ],
                    # never recommended under doubt about a red flag, nor for an MRI the rating calls appropriate
                    not found and not verdict.doubts and verdict.pama_rating != "appropriate",
                ),
            )
        )
    return found, "at-most-one"


@dataclass
class CardResult:
    card: dict
    rating_action: dict | None  # the PAMA rating systemAction (Argonaut and CDS Hooks 2.0 lists)
    clearing_action: dict | None  # no rating: an update that removes an earlier one (CDS Hooks 2.0 list only)
    suggestion_kinds: dict[str, str]  # suggestion uuid -> SUGGEST_* kind
    override_reasons: dict[str, str]  # the override reason codes this card offers -> their display


def build_card(
    order: MriOrder,
    verdict: Verdict,
    mappings: Mappings,
    consult_id: str,
    evidence_url: str | None = None,
    notes: list[str] | None = None,
) -> CardResult:
    """The card for one order and its systemAction: the rating, or the removal of a stale one.
    `evidence_url`: the evidence page of this evaluation (the card links it); `notes`: one-line
    notes the card must carry (resources of another patient left out)."""
    source = _source(verdict, mappings)
    rating_extensions: list[dict] = []
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
    already_urgent = verdict.code == "indicated-urgent" and verdict.priority is None
    card: dict = {"uuid": new_uuid(), "summary": _summary(verdict, already_urgent)}
    context = CardContext(order, verdict, mappings, consult_id, source.get("url"), rating_extensions)
    suggestions, behaviour = _suggestions(context)
    if already_urgent:
        # The draft is already as urgent as the guideline asks: what is left is the next step and
        # the contrast (a warning while any is left to do: never one line of info for an emergency).
        card["indicator"] = "warning" if suggestions else "info"
    else:
        card["indicator"] = "warning" if verdict.ask_if_new or verdict.doubts else INDICATOR.get(verdict.code, "info")
    card["detail"] = _detail(order, verdict, source, notes or [])
    card["source"] = source
    reasons: list[tuple[str, str]] = []
    if suggestions:
        card["suggestions"] = [suggestion for _, suggestion in suggestions]
        card["selectionBehavior"] = behaviour
        reasons = [*OVERRIDE_SETS.get(verdict.override_set, OVERRIDE_SETS["low-value"]), OTHER]
        card["overrideReasons"] = [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in reasons
        ]
    if evidence_url:
        card["links"] = [
            {"label": "Evidence: findings, codes and the full checklist", "url": evidence_url, "type": "absolute"}
        ]
    return CardResult(
        card,
        rating_action,
        clearing_action,
        {suggestion["uuid"]: kind for kind, suggestion in suggestions},
        dict(reasons),
    )
