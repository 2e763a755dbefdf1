"""`GET /dashboard`: the utilization report with charts, filters and exports, for analysts.

Behind `CDS_DASHBOARD_TOKEN` (a bearer token, or the basic-auth password with any user name; unset,
404). Wrong credentials are slowed down: after FREE_FAILURES from one address, that address is
answered 429 with Retry-After for a time that doubles with each further failure (up to
MAX_BLOCK_SECONDS), without its credential being looked at; one success clears it. Counted per
server process. Every answer forbids framing and any script but the page's own
(Content-Security-Policy with a per-page nonce), and is not cached.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from flask import Blueprint, Response, g, request

from ..utilization.gate import DatabaseUnavailable
from ..utilization.report import (
    Filters,
    Options,
    Window,
    apply_filters,
    build_report,
    load_departments,
    order_table,
)
from ..utilization.store import Store

FREE_FAILURES = 5
MAX_BLOCK_SECONDS = 300.0
FORGET_SECONDS = 900.0
MAX_ADDRESSES = 10_000
DEFAULT_DAYS = 90
MAX_DAYS = 3660
REPORT_SECONDS = 30.0  # the report's database reads (a frozen database must not hold the thread longer)


def _csp(nonce: str) -> str:
    return (
        "default-src 'none'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        # plotly sets style attributes as it draws
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


class Throttle:
    """Failed credentials per client address (see the module's docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float, float]] = {}  # address -> (failures, last, blocked until)

    def wait(self, address: str) -> float:
        with self._lock:
            entry = self._failures.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry[2] - time.monotonic())

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            count, last, _ = self._failures.get(address, (0, now, 0.0))
            if now - last > FORGET_SECONDS:
                count = 0
            count += 1
            blocked = now + min(MAX_BLOCK_SECONDS, 2.0 ** (count - FREE_FAILURES)) if count >= FREE_FAILURES else 0.0
            self._failures[address] = (count, now, blocked)
            if len(self._failures) > MAX_ADDRESSES:
                oldest = min(self._failures, key=lambda a: self._failures[a][1])
                del self._failures[oldest]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


@functools.cache
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


@functools.lru_cache(maxsize=4)
def _departments_at(path: str, _mtime: float) -> dict[str, str]:
    return load_departments(Path(path))


def dashboard_blueprint(settings, store: Store, error: Callable[..., Response]) -> Blueprint:
    """The dashboard's routes; `error(status, message)` is the app's JSON error answer."""
    blueprint = Blueprint("dashboard", __name__)
    throttle = Throttle()

    @blueprint.after_request
    def protect(response: Response) -> Response:
        nonce = g.get("csp_nonce") or secrets.token_urlsafe(16)
        response.headers["Content-Security-Policy"] = _csp(nonce)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def refusal() -> Response | None:
        if not settings.dashboard_token:
            return error(404, "the dashboard is off: set CDS_DASHBOARD_TOKEN to turn it on")
        address = request.remote_addr or "?"
        wait = throttle.wait(address)
        if wait > 0:
            response = error(429, "too many wrong dashboard credentials from this address: try again later")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        offered = (
            value.strip()
            if scheme.lower() == "bearer"
            else (
                request.authorization.password
                if request.authorization and request.authorization.type == "basic"
                else ""
            )
        )
        if offered and hmac.compare_digest(str(offered).encode(), settings.dashboard_token.encode()):
            throttle.succeeded(address)
            return None
        if offered:
            throttle.failed(address)
        response = error(
            401,
            "the dashboard needs its credential (CDS_DASHBOARD_TOKEN): as a bearer token, "
            "or as the password of basic authentication (any user name)",
        )
        response.headers["WWW-Authenticate"] = 'Basic realm="spine-imaging CDS dashboard", charset="UTF-8"'
        return response

    def chosen() -> tuple[Window, Filters]:
        def day(name: str) -> date | None:
            raw = request.args.get(name, "").strip()
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                raise ValueError(f"{name} must be a date, YYYY-MM-DD") from None

        default = Window.last_days(DEFAULT_DAYS)
        until = day("until") or default.until
        since = day("since") or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            raise ValueError("since is after until")
        if (until - since).days > MAX_DAYS:
            raise ValueError(f"at most {MAX_DAYS} days at once")
        mode = request.args.get("mode") or None
        if mode not in (None, "live", "shadow"):
            raise ValueError("mode must be live or shadow")
        filters = Filters(
            region=request.args.get("region") or None,
            clinician=request.args.get("clinician") or None,
            site=request.args.get("site") or None,
            mode=mode,
        )
        return Window(since, until), filters

    def prepared():
        """(window, filters, options, table) for this request, or the answer that refuses it (the
        credential first, then the window and the data)."""
        refused = refusal()
        if refused is not None:
            return refused
        try:
            window, filters = chosen()
        except ValueError as problem:
            return error(400, str(problem))
        path = getattr(settings, "departments_file", None)
        try:
            departments = _departments_at(str(path), Path(path).stat().st_mtime) if path else {}
        except (OSError, ValueError) as problem:
            return error(500, f"CDS_DEPARTMENTS_FILE: {problem}")
        options = Options(departments=departments, unsigned_after_hours=getattr(settings, "unsigned_after_hours", 24.0))
        try:
            table = store.gate.call(
                lambda: order_table(store.engine, window, options), timeout=REPORT_SECONDS, slow_ok=True
            )
        except DatabaseUnavailable as problem:
            response = error(503, f"the report cannot be read now: {problem}")
            response.headers["Retry-After"] = "30"
            return response
        return window, filters, options, table

    @blueprint.get("/dashboard")
    def dashboard():
        ready = prepared()
        if isinstance(ready, Response):
            return ready
        window, filters, options, table = ready
        from ..utilization.charts import render_html

        report = build_report(store.engine, window, filters=filters, options=options, table=table)
        g.csp_nonce = secrets.token_urlsafe(16)
        page = render_html(
            report,
            plotly_script="/dashboard/plotly.min.js",
            title="Spine MRI orders",
            nonce=g.csp_nonce,
            controls={
                "action": "/dashboard",
                "exports": [("orders (CSV)", "/dashboard/orders.csv"), ("summary (CSV)", "/dashboard/report.csv")],
            },
        )
        return Response(page, mimetype="text/html")

    @blueprint.get("/dashboard/orders.csv")
    def orders_csv():
        ready = prepared()
        if isinstance(ready, Response):
            return ready
        window, filters, _options, table = ready
        from ..utilization.render import render_orders_csv

        name = f"spine-mri-orders-{window.since}-{window.until}.csv"
        return Response(
            render_orders_csv(apply_filters(table, filters)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @blueprint.get("/dashboard/report.csv")
    def report_csv():
        ready = prepared()
        if isinstance(ready, Response):
            return ready
        window, filters, options, table = ready
        from ..utilization.render import render_csv

        report = build_report(store.engine, window, filters=filters, options=options, table=table)
        name = f"spine-mri-report-{window.since}-{window.until}.csv"
        return Response(
            render_csv(report), mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    @blueprint.get("/dashboard/plotly.min.js")
    def plotly_js():
        # the charting library itself, from the installed package (no CDN), behind the same credential
        refused = refusal()
        if refused is not None:
            return refused
        return Response(
            _plotly_js(), mimetype="application/javascript", headers={"Cache-Control": "private, max-age=86400"}
        )

    return blueprint
