"""HTTP layer: routes, JSON in and out, error answers, CORS. No clinical logic here."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import orjson
from flask import Flask, Response, abort, g, request

from ..clinical.mappings import get_mappings
from ..fhir.client import FhirFetcher
from ..hooks.discovery import SERVICE_HOOKS, discovery_document
from ..hooks.evaluation import evaluate_hook
from ..hooks.request import HookRequestError
from ..utilization.store import DatabaseUnavailable, FeedbackError, Store
from .auth import Authenticator, AuthError, forwarded_base, is_loopback, load_trusted_issuers
from .config import Settings
from .dashboard import dashboard_blueprint
from .evidence import EVIDENCE_PATH, EvidenceLinks
from .evidence import blueprint as evidence_blueprint
from .logs import AUTHENTICATION_OFF, LogEntry
from .recording import order_records, signed_orders

log = logging.getLogger("cds_service.http")

# Deeper JSON is refused (400): the service copies orders into its answer and stores feedback,
# and Python's copy and json recurse. FHIR resources nest a dozen levels at most.
MAX_JSON_DEPTH = 64


def _json(body, status: int = 200) -> Response:
    try:
        payload = orjson.dumps(body)
    except orjson.JSONEncodeError:  # echoed request text orjson will not write (a lone surrogate)
        payload = json.dumps(body, separators=(",", ":")).encode()
    return Response(payload, status=status, mimetype="application/json")


def _error(status: int, message: str, **details) -> Response:
    g.reason = message  # for the answer's log line
    return _json({"error": message, **details}, status)


def _credentials(body) -> list[str]:
    """The strings under a request's fhirAuthorization: never to appear in a log line."""
    found, stack = [], [body.get("fhirAuthorization")] if isinstance(body, dict) else []
    while stack:
        value = stack.pop()
        if isinstance(value, str) and len(value) >= 4:
            found.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def _lenient_json(raw: bytes):
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise HookRequestError(400, f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        raise HookRequestError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    return body


def _deeper_than(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def create_app(
    settings: Settings | None = None, base_urls: Sequence[str] = (), migrate: bool = True, announce: bool = True
) -> Flask:
    """The WSGI app. `base_urls`: the URLs this server is called at by its bound address (`serve`
    passes them): the bases a token's aud may name unless CDS_PUBLIC_BASE_URL is set (then it alone is).
    `migrate`: bring the database schema up to date (`serve` does it once, before forking workers).
    `announce`: log that authentication is off (`serve` says it once, not once per worker)."""
    settings = settings or Settings.from_env()
    problem = settings.authentication_problem(base_urls)
    if problem:
        raise RuntimeError(problem)
    mappings = get_mappings(settings.mappings_dir)
    store = Store.from_settings(settings, migrate=migrate)
    store.start()  # replays what an earlier process left in the spool
    discovery = discovery_document(mappings)
    # CDS_PUBLIC_BASE_URL, when set, is the only base a token's aud may name: behind a proxy the
    # bound address is an internal one, and a forwarded header names what the client chose.
    audience_bases = [
        url.rstrip("/") for url in ([settings.public_base_url] if settings.public_base_url else base_urls)
    ]
    authenticator = None
    if settings.trusted_issuers is not None:
        authenticator = Authenticator(
            load_trusted_issuers(settings.trusted_issuers),
            settings.jwt_leeway_seconds,
            store.first_use_of_token,
            max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
        )
    elif announce:
        log.warning(LogEntry(event="startup", warning=AUTHENTICATION_OFF))
    fetcher = FhirFetcher(settings.fhir) if settings.fhir.allowed_servers else None
    evidence_links = EvidenceLinks(store.patient_key, int(settings.evidence_link_hours * 3600))
    app = Flask(__name__)
    app.register_blueprint(evidence_blueprint(evidence_links, mappings.guideline))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    origins = {o.strip() for o in settings.cors_origins.split(",") if o.strip()} or {"*"}

    def read_json():
        if request.mimetype and request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
            raise HookRequestError(415, f"send the body as application/json, not {request.mimetype}")
        raw = request.get_data(cache=False)
        # Werkzeug stops a chunked body at the limit without a word: one more byte means it was longer.
        if (
            request.content_length is None
            and len(raw) >= settings.max_body_bytes
            and request.environ["wsgi.input"].read(1)
        ):
            abort(413)
        too_deep = HookRequestError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
        try:
            g.body = orjson.loads(raw)  # (orjson: a third of the stdlib parser's time, same objects)
        except orjson.JSONDecodeError as error:
            if "recursion" in str(error).lower():
                raise too_deep from None
            # what orjson refuses and json reads (Infinity, NaN, lone surrogates): accepted as before
            g.body = _lenient_json(raw)
        # The prefetch (megabytes at times) is only read, never copied or re-encoded whole: walking
        # it would cost as much as parsing it, and the parser's own recursion limit guards it.
        checked = {k: v for k, v in g.body.items() if k != "prefetch"} if isinstance(g.body, dict) else g.body
        if isinstance(checked, (dict, list)) and _deeper_than(checked, MAX_JSON_DEPTH):
            raise too_deep
        return g.body

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
        return _error(error.status, error.message, **error.details)

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("unexpected error")
        return _error(500, "internal error: the hook could not be evaluated")

    def audiences() -> tuple[list[str], str | None]:
        # aud must be the URL of the endpoint called, on a base this server knows it is called at:
        # CDS_PUBLIC_BASE_URL alone when set; else the bound address and, with CDS_TRUST_PROXY, the
        # origin the proxy names. Never the request's Host header (the caller chooses that).
        # Second: the one URL a refusal may name (the public one), never an internal address.
        bases = list(audience_bases)
        shown = bases[0] if settings.public_base_url else None
        if settings.trust_proxy and not settings.public_base_url:
            forwarded = forwarded_base(request.headers)
            if forwarded:
                bases.append(forwarded)
                shown = forwarded
        shown = shown or next((base for base in bases if is_loopback(base)), None)
        return [base + request.path for base in bases], (shown + request.path if shown else None)

    @app.before_request
    def start_clock_and_authenticate():
        g.started = time.perf_counter()
        if request.method == "OPTIONS" or request.path.rstrip("/") == "/cds-services":
            return None  # CORS preflight and discovery (with or without a trailing slash) stay open
        if not request.path.startswith("/cds-services/"):
            return None  # health stays open, as the spec allows; the dashboard has its own credential
        if authenticator is None:
            return None
        try:
            authenticator.verify(request.headers.get("Authorization"), *audiences())
        except AuthError as error:
            response = _error(401, error.reason)
            # Nothing from the token goes into a header (CR/LF, NUL or non-Latin-1 would break it).
            response.headers["WWW-Authenticate"] = (
                'Bearer realm="cds-services", error="invalid_token"'
                if request.headers.get("Authorization")
                else 'Bearer realm="cds-services"'
            )
            return response
        return None

    @app.after_request
    def allow_cross_origin(response: Response) -> Response:
        # Browser-based EHRs (the CDS Hooks sandbox among them) call from another origin. A call
        # without an Origin header comes from no browser: nothing to allow.
        origin = request.headers.get("Origin")
        if origin is None:
            return response
        if "*" not in origins:
            response.vary.add("Origin")
            if origin not in origins:
                return response
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
        if request.method == "OPTIONS":  # the preflight: what the real request may carry
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    @app.after_request
    def log_answer(response: Response) -> Response:
        # One line per answer, whatever its status; never a token or a credential.
        entry = LogEntry(
            {
                "event": "answer",
                "method": request.method,
                # an evidence link is a capability: its token never reaches a log
                "path": "/evidence/[link]" if request.path.startswith(EVIDENCE_PATH) else request.path[:200],
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            }
        )
        body = g.get("body")
        if isinstance(body, dict) and isinstance(body.get("hookInstance"), str):
            entry["hookInstance"] = body["hookInstance"][:100]
        entry.update(g.get("log_details", {}))
        if response.status_code >= 400:
            reason = str(g.get("reason", response.status))[:500]
            for secret in _credentials(body):
                reason = reason.replace(secret, "[redacted]")
            entry["reason"] = reason
        log.log(logging.WARNING if response.status_code >= 500 else logging.INFO, entry)
        return response

    @app.get("/healthz")
    def healthz():
        return _json(
            {
                "status": "ok",
                "services": sorted(SERVICE_HOOKS),
                "mappings_version": mappings.version,
                "mode": settings.mode,
                "recording": "on" if settings.record_evaluations else "off",
                "database": store.dialect,
                "record": store.health(),
                "authentication": "on" if authenticator else "OFF (CDS_ALLOW_UNAUTHENTICATED=1, development only)",
            }
        )

    @app.get("/cds-services")
    @app.get("/cds-services/")  # discovery with a trailing slash too (clients append one)
    def services():
        return _json(discovery)

    @app.post("/cds-services/<service_id>")
    def hook(service_id: str):
        if service_id not in SERVICE_HOOKS:
            return _error(404, f"unknown CDS service '{service_id}'")
        body = read_json()
        # (request.host_url would re-encode the whole URL: the scheme and host are enough)
        base = settings.public_base_url or f"{request.scheme}://{request.host}"
        result = evaluate_hook(
            service_id,
            body,
            mappings,
            fetcher=fetcher,
            evidence_link=lambda page: evidence_links.url(base, page),
            shown_before=getattr(store, "card_shown_for", None),
        )
        # what the hook decided goes on the answer's one log line
        g.log_details = {
            "service": service_id,
            "patient": store.patient_hash(body["context"].get("patientId")),
            "cards": len(result.response["cards"]),
            "verdicts": [e.verdict for e in result.evaluations],
            "mode": settings.mode,
            "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        }
        # shadow: evaluated and recorded, no card shown (the baseline before go-live)
        response = _json({"cards": []} if settings.mode == "shadow" else result.response)
        if settings.record_evaluations:
            # spooled before the answer leaves (recording.py); the time is the request's, as the EHR waits
            http_ms = round((time.perf_counter() - g.started) * 1000, 3)
            store.record(
                order_records(service_id, body, result, mappings, settings.mode, http_ms),
                signed_orders(service_id, body, result),
            )
        return response

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str):
        if service_id not in SERVICE_HOOKS:
            return _error(404, f"unknown CDS service '{service_id}'")
        body = read_json()
        try:
            stored = store.record_feedback(service_id, body)
        except FeedbackError as error:
            return _error(400, str(error))
        except DatabaseUnavailable:
            response = _error(503, "feedback cannot be stored now: the database is unreachable; send it again later")
            response.headers["Retry-After"] = "10"
            return response
        return _json({"stored": stored})

    app.register_blueprint(dashboard_blueprint(settings, store, _error))

    if settings.bench_bare_endpoint:

        @app.post("/_bench/bare")
        def bare():
            # The benchmark's baseline: the same JSON parsing, no clinical work.
            read_json()
            return _json({"cards": []})

    return app
