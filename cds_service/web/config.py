"""Settings, all from environment variables (documented in docs/operations.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..fhir.client import FhirSettings, checked_allowed_server
from ..fhir.outbound import describe_host, is_base_url


def _number(name: str, default, kind=int, minimum=None):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    noun = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError as error:
        raise SystemExit(f"setting {name} must be {noun}, got {raw!r}") from error
    if minimum is not None and not value >= minimum:  # (also refuses nan)
        raise SystemExit(f"setting {name} must be {noun} of at least {minimum}, got {raw!r}")
    return value


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"setting {name} must be 1 or 0 (on or off), got {raw!r}")


def _path(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw) if raw else None


MODES = ("live", "shadow")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level() -> str:
    level = os.environ.get("CDS_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise SystemExit(f"setting CDS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level


def _mode() -> str:
    mode = os.environ.get("CDS_MODE", "live").strip().lower() or "live"
    if mode not in MODES:
        raise SystemExit(f"setting CDS_MODE must be live or shadow, got {mode!r}")
    return mode


def _allowed_servers(name: str) -> frozenset[str]:
    try:
        return frozenset(checked_allowed_server(url) for url in os.environ.get(name, "").split(",") if url.strip())
    except ValueError as error:
        raise SystemExit(f"setting {name}: {error}") from None


def _base_url(name: str) -> str | None:
    url = (os.environ.get(name) or "").strip().rstrip("/")
    if url and not is_base_url(url):
        raise SystemExit(
            f"setting {name} must be an http(s) base URL without credentials, query or fragment, "
            f"got {describe_host(url)}"
        )
    return url or None


@dataclass(frozen=True)
class Settings:
    feedback_db: Path
    mappings_dir: Path | None
    max_body_bytes: int
    cors_origins: str
    bench_bare_endpoint: bool
    log_level: str
    trusted_issuers: Path | None = None
    allow_unauthenticated: bool = False
    public_base_url: str | None = None
    trust_proxy: bool = False
    jwt_leeway_seconds: float = 5.0
    jwt_max_lifetime_seconds: float = 300.0
    fhir: FhirSettings = field(default_factory=lambda: FhirSettings(allowed_servers=frozenset()))
    database_url: str | None = None  # None: the SQLite file feedback_db
    patient_hash_key: str | None = None  # None: a random key kept in the database
    mode: str = "live"  # live | shadow (evaluate and record, answer no cards)
    dashboard_token: str | None = None  # None: GET /dashboard is off
    record_evaluations: bool = True
    evidence_link_hours: float = 8.0  # how long a card's evidence link opens (a clinic shift)
    spool_dir: Path | None = None  # None: beside the SQLite file, or var/spool/<database> (utilization.store)
    spool_max_mb: float = 256.0  # per server process
    database_timeout_seconds: float = 1.0  # one database call made for a request
    unsigned_after_hours: float = 24.0  # an advised order not signed within this counts as cancelled
    departments_file: Path | None = None  # userId -> department, for the report and the dashboard

    @classmethod
    def from_env(cls) -> Settings:
        mappings = os.environ.get("CDS_MAPPINGS_DIR")
        return cls(
            feedback_db=Path(os.environ.get("CDS_FEEDBACK_DB", "var/cds-feedback.sqlite3")),
            mappings_dir=Path(mappings) if mappings else None,
            max_body_bytes=_number("CDS_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024),
            cors_origins=os.environ.get("CDS_CORS_ORIGINS", "*"),
            bench_bare_endpoint=_flag("CDS_BENCH_BARE_ENDPOINT"),
            log_level=_log_level(),
            trusted_issuers=Path(os.environ["CDS_TRUSTED_ISSUERS"]) if os.environ.get("CDS_TRUSTED_ISSUERS") else None,
            allow_unauthenticated=_flag("CDS_ALLOW_UNAUTHENTICATED"),
            public_base_url=_base_url("CDS_PUBLIC_BASE_URL"),
            trust_proxy=_flag("CDS_TRUST_PROXY"),
            jwt_leeway_seconds=_number("CDS_JWT_LEEWAY_SECONDS", 5.0, float, minimum=0),
            database_url=os.environ.get("CDS_DATABASE_URL") or None,
            patient_hash_key=os.environ.get("CDS_PATIENT_HASH_KEY") or None,
            mode=_mode(),
            dashboard_token=os.environ.get("CDS_DASHBOARD_TOKEN") or None,
            record_evaluations=_flag("CDS_RECORD_EVALUATIONS", default=True),
            evidence_link_hours=_number("CDS_EVIDENCE_LINK_HOURS", 8.0, float, minimum=0.1),
            spool_dir=_path("CDS_SPOOL_DIR"),
            spool_max_mb=_number("CDS_SPOOL_MAX_MB", 256.0, float, minimum=1),
            database_timeout_seconds=_number("CDS_DATABASE_TIMEOUT_SECONDS", 1.0, float, minimum=0.05),
            unsigned_after_hours=_number("CDS_UNSIGNED_AFTER_HOURS", 24.0, float, minimum=0.1),
            departments_file=_path("CDS_DEPARTMENTS_FILE"),
            jwt_max_lifetime_seconds=_number("CDS_JWT_MAX_LIFETIME_SECONDS", 300.0, float, minimum=1),
            fhir=FhirSettings(
                allowed_servers=_allowed_servers("CDS_FHIR_ALLOWED_SERVERS"),
                budget_seconds=_number("CDS_FHIR_BUDGET_SECONDS", 2.0, float, minimum=0.1),
                max_pages=_number("CDS_FHIR_MAX_PAGES", 20, minimum=1),
                concurrency=_number("CDS_FHIR_CONCURRENCY", 8, minimum=1),
                max_response_bytes=_number("CDS_FHIR_MAX_RESPONSE_BYTES", 16 * 1024 * 1024, minimum=1024),
                budget_bytes=_number("CDS_FHIR_BUDGET_BYTES", 16 * 1024 * 1024, minimum=1024),
            ),
        )

    def authentication_problem(self, base_urls: Sequence[str] = ()) -> str | None:
        """Why the service must not start as configured (None when it may); `base_urls` are the
        URLs the server is reached at by its bound address (see auth.bound_base_urls)."""
        if self.trusted_issuers is None and not self.allow_unauthenticated:
            return (
                "no trusted CDS clients: set CDS_TRUSTED_ISSUERS to a trusted-issuers JSON file "
                "(see docs/integrating.md), or CDS_ALLOW_UNAUTHENTICATED=1 for development only"
            )
        if self.trusted_issuers is not None and not (self.public_base_url or base_urls or self.trust_proxy):
            return (
                "no URL is known that a client's token may name as its aud: set CDS_PUBLIC_BASE_URL to the "
                "base URL clients call (a wildcard bind address such as 0.0.0.0 does not say it)"
            )
        return None
