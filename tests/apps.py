"""Settings for an app under test: the one place their defaults live (each test names what it changes)."""

from __future__ import annotations

from pathlib import Path

from cds_service.web.config import Settings


def app_settings(tmp_path: Path, **changes) -> Settings:
    """A database in `tmp_path`, the packaged mappings, a 10 MB body limit, any origin, no bench
    endpoint, INFO logs; authentication as `changes` says (trusted_issuers or allow_unauthenticated)."""
    defaults: dict = {
        "feedback_db": tmp_path / "f.sqlite3",
        "mappings_dir": None,
        "max_body_bytes": 10**7,
        "cors_origins": "*",
        "bench_bare_endpoint": False,
        "log_level": "INFO",
    }
    return Settings(**{**defaults, **changes})
