"""HTTP layer: routes, JSON in and out, error answers, CORS. No clinical logic here."""
from __future__ import annotations

import hmac
import json
import logging

from flask import Flask, Response, request
from flask_cors import CORS

from .auth import AuthError, Authenticator, load_trusted_issuers
from .config import Settings
from .discovery import SERVICE_HOOKS, discovery_document
from .store import FeedbackError, Store
from .fhir_client import FhirFetcher
from .hooks import HookRequestError, evaluate_hook, order_records
from .mappings import get_mappings

log = logging.getLogger("cds_service.http")


def _json(body, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    mappings = get_mappings(settings.mappings_dir)
    store = Store.from_settings(settings)
    discovery = discovery_document(mappings)
    authenticator = None
    if settings.trusted_issuers is not None:
        authenticator = Authenticator(load_trusted_issuers(settings.trusted_issuers), settings.jwt_leeway_seconds,
                                      store.first_use_of_token)
    elif not settings.allow_unauthenticated:
        raise RuntimeError(settings.authentication_problem())
    else:
        log.warning(json.dumps({"event": "startup", "warning": "AUTHENTICATION IS OFF (CDS_ALLOW_UNAUTHENTICATED=1): "
                                "any caller can use this service. Development only."}))
    fetcher = FhirFetcher(settings.fhir) if settings.fhir.allowed_servers else None
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()] or ["*"]
    CORS(app, origins=origins if origins != ["*"] else "*", allow_headers=["Authorization", "Content-Type"],
         methods=["GET", "POST", "OPTIONS"])

    def read_json():
        if request.mimetype and request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
            raise HookRequestError(415, f"send the body as application/json, not {request.mimetype}")
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
        return _json({"error": error.message, **error.details}, error.status)

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("unexpected error")
        return _error(500, "internal error: the hook could not be evaluated")

    def audiences() -> list[str]:
        # aud must be the URL of the endpoint called; behind a proxy, the configured public URL.
        urls = [request.base_url]
        if settings.public_base_url:
            urls.append(settings.public_base_url + request.path)
        return urls

    @app.before_request
    def authenticate():
        if request.method == "OPTIONS" or not request.path.startswith("/cds-services/"):
            return None  # discovery, health and CORS preflight stay open, as the spec allows
        if authenticator is None:
            return None
        try:
            authenticator.verify(request.headers.get("Authorization"), audiences())
        except AuthError as error:
            log.info(json.dumps({"event": "auth-refused", "path": request.path, "reason": error.reason}))
            response = _error(401, error.reason)
            description = error.reason.replace('"', "'")
            response.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{description}"'
            return response
        return None

    @app.get("/healthz")
    def healthz():
        return _json({"status": "ok", "services": sorted(SERVICE_HOOKS), "mappings_version": mappings.version,
                      "mode": settings.mode, "recording": "on" if settings.record_evaluations else "off",
                      "database": store.dialect,
                      "authentication": "on" if authenticator else "OFF (CDS_ALLOW_UNAUTHENTICATED=1, development only)"})

    @app.get("/cds-services")
    def services():
        return _json(discovery)

    @app.post("/cds-services/<service_id>")
    def hook(service_id: str):
        if service_id not in SERVICE_HOOKS:
            return _error(404, f"unknown CDS service '{service_id}'")
        body = read_json()
        result = evaluate_hook(service_id, body, mappings, fetcher=fetcher)
        if result.evaluations and settings.record_evaluations:
            store.record(order_records(service_id, body, result, mappings, settings.mode))
        log.info(json.dumps({
            "event": "hook", "service": service_id, "hookInstance": body.get("hookInstance"),
            "patient": store.patient_hash(body["context"].get("patientId")), "cards": len(result.response["cards"]),
            "verdicts": [e.verdict for e in result.evaluations], "mode": settings.mode,
            "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        }))
        if settings.mode == "shadow":
            return _json({"cards": []})  # evaluated and recorded: the baseline before go-live
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

    def dashboard_refusal() -> Response | None:
        if not settings.dashboard_token:
            return _error(404, "the dashboard is off: set CDS_DASHBOARD_TOKEN to turn it on")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        offered = value.strip() if scheme.lower() == "bearer" else (
            request.authorization.password if request.authorization and request.authorization.type == "basic" else "")
        if offered and hmac.compare_digest(str(offered).encode(), settings.dashboard_token.encode()):
            return None
        response = _error(401, "the dashboard needs its credential (CDS_DASHBOARD_TOKEN): as a bearer token, "
                               "or as the password of basic authentication (any user name)")
        response.headers["WWW-Authenticate"] = 'Basic realm="spine-imaging CDS dashboard", charset="UTF-8"'
        return response

    @app.get("/dashboard")
    def dashboard():
        refusal = dashboard_refusal()
        if refusal is not None:
            return refusal
        from .report import Window, build_report, render_html

        report = build_report(store.engine, Window.last_days(90), top=10)
        page = render_html(report, plotly_script="/dashboard/plotly.min.js",
                           title="Spine MRI orders, last 90 days")
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/plotly.min.js")
    def plotly_js():
        # the charting library itself (public code), served from the installed package: no CDN
        from plotly.offline import get_plotlyjs

        return Response(get_plotlyjs(), mimetype="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    if settings.bench_bare_endpoint:
        @app.post("/_bench/bare")
        def bare():
            # The benchmark's baseline: the same JSON parsing, no clinical work.
            read_json()
            return _json({"cards": []})

    return app
