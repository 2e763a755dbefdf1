"""HTTP layer: routes, JSON in and out, error answers, CORS. No clinical logic here."""
from __future__ import annotations

import json
import logging
import time

from flask import Flask, Response, request
from flask_cors import CORS

from .config import Settings
from .discovery import SERVICE_HOOKS, discovery_document
from .feedback import FeedbackError, Store
from .hooks import HookRequestError, evaluate_hook
from .mappings import get_mappings

log = logging.getLogger("cds_service.http")


def _json(body, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    mappings = get_mappings(settings.mappings_dir)
    store = Store(settings.feedback_db)
    discovery = discovery_document(mappings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    CORS(app, origins=settings.cors_origins, allow_headers=["Authorization", "Content-Type"],
         methods=["GET", "POST", "OPTIONS"])

    def read_json():
        raw = request.get_data(cache=False)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise HookRequestError(400, f"the request body is not valid JSON ({error})") from None

    @app.errorhandler(413)
    def too_large(_error_):
        return _error(413, f"the request body is larger than {settings.max_body_bytes} bytes (CDS_MAX_BODY_BYTES)")

    @app.errorhandler(404)
    def not_found(_error_):
        return _error(404, "no such endpoint: see GET /cds-services")

    @app.errorhandler(405)
    def wrong_method(_error_):
        return _error(405, "method not allowed on this endpoint")

    @app.errorhandler(HookRequestError)
    def bad_request(error: HookRequestError):
        return _error(error.status, error.message)

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("unexpected error")
        return _error(500, "internal error: the hook could not be evaluated")

    @app.get("/healthz")
    def healthz():
        return _json({"status": "ok", "services": sorted(SERVICE_HOOKS)})

    @app.get("/cds-services")
    def services():
        return _json(discovery)

    @app.post("/cds-services/<service_id>")
    def hook(service_id: str):
        if service_id not in SERVICE_HOOKS:
            return _error(404, f"unknown CDS service '{service_id}'")
        body = read_json()
        result = evaluate_hook(service_id, body, mappings)
        if result.evaluations:
            store.record_evaluations(service_id, body["hookInstance"], body["context"].get("patientId"),
                                     result.evaluations)
        log.info(json.dumps({
            "event": "hook", "service": service_id, "hookInstance": body.get("hookInstance"),
            "patient": body["context"].get("patientId"), "cards": len(result.response["cards"]),
            "verdicts": [e.verdict for e in result.evaluations],
            "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        }))
        return _json(result.response)

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str):
        if service_id not in SERVICE_HOOKS:
            return _error(404, f"unknown CDS service '{service_id}'")
        body = read_json()
        try:
            stored = store.record_feedback(service_id, body)
        except FeedbackError as error:
            return _error(400, str(error))
        return _json({"stored": stored})

    if settings.bench_bare_endpoint:
        @app.post("/_bench/bare")
        def bare():
            # The benchmark's baseline: the same JSON parsing, no clinical work.
            read_json()
            return _json({"cards": []})

    return app
