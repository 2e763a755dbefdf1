"""What makes a hook request one the service can evaluate: the CDS Hooks 2.0 request schema and
the hook's context schema, checked fast (fastjsonschema) and worded by jsonschema when refused;
then what a schema cannot say: every draft order is for the context patient, and every selection
names a draft order.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import fastjsonschema
import jsonschema

from ..fhir.patient import owner
from .discovery import SERVICE_HOOKS


class HookRequestError(Exception):
    """A request the service cannot evaluate; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, details: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}


def _require(condition: bool, message: str, status: int = 400) -> None:
    if not condition:
        raise HookRequestError(status, message)


SCHEMAS = Path(__file__).resolve().parent / "schemas"


@cache
def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema(name))


@cache
def _fast_check(name: str):
    """The same schema compiled to Python code (fastjsonschema): about 2 us instead of 50 per request.
    Formats stay unchecked, as jsonschema leaves them by default."""
    return fastjsonschema.compile(_schema(name), formats={"uri": lambda _value: True})


def _schema_error(name: str, instance, prefix: str) -> str | None:
    try:
        _fast_check(name)(instance)
        return None
    except Exception:
        pass
    # jsonschema decides what is wrong and says it (fastjsonschema only waves through what it accepts)
    error = next(iter(sorted(_validator(name).iter_errors(instance), key=lambda e: len(e.absolute_path))), None)
    if error is None:
        return None
    path = ".".join(str(part) for part in error.absolute_path)
    field = f"{prefix}.{path}" if prefix and path else (path or prefix)
    if error.validator == "required":
        return f"{error.message.split(' is a ')[0]} is required" + (f" in '{field}'" if field else "")
    return f"'{field or '(body)'}': {error.message}"


def check_request(service_id: str, body) -> None:
    """The request against the CDS Hooks 2.0 request schema and the hook's context schema."""
    _require(service_id in SERVICE_HOOKS, f"unknown CDS service '{service_id}'", 404)
    _require(isinstance(body, dict), "the request body must be a JSON object")
    problem = _schema_error("cds-hooks-request", body, "")
    _require(problem is None, problem or "")
    expected = SERVICE_HOOKS[service_id]
    _require(body["hook"] == expected, f"service '{service_id}' answers the '{expected}' hook, not '{body['hook']}'")
    problem = _schema_error(f"{expected}-context", body["context"], "context")
    _require(problem is None, problem or "")
    _check_draft_orders(body["context"], expected)


def _shown(value: object) -> str:
    """Request text fit to quote in an error: printable and short."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= 100 else text[:100] + "..."


def _check_draft_orders(context: dict, hook: str) -> None:
    """Each draft order is for the context patient (or names none); each selection is a draft order."""
    patient_id = context["patientId"]
    entries = context["draftOrders"].get("entry")
    present: set[str] = set()
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        reference = f"{resource.get('resourceType')}/{resource.get('id')}"
        present.update((reference, str(resource.get("id"))))  # a bare id is read as a selection too
        if owner(resource, patient_id) == "other":  # (the message is built only when it is said)
            _require(
                False,
                f"context.draftOrders: {_shown(reference)} is for another patient: its subject is not "
                "context.patientId (a hook carries only its own patient's orders)",
            )
    if hook != "order-select":
        return
    for selection in context.get("selections") or []:
        if selection not in present:
            _require(False, f"context.selections names {_shown(selection)}, which is not in context.draftOrders")
