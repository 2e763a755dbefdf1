"""The service's database: every evaluated order, the feedback on its card, and seen token ids.

One schema (`schema.py`, SQLAlchemy Core; Alembic migrations in `migrations/`) on the embedded
SQLite file by default or on PostgreSQL (`CDS_DATABASE_URL=postgresql+psycopg://...`), so several
instances behind a load balancer share feedback, the evaluation log and replay protection.

The database never fails a hook, and an answered evaluation is never lost to it:

- Evaluations go to the local spool first (`spool.py`: one file append on the request path) and
  from there to the database in batches, off the request path; while the database is gone they
  wait on disk, across restarts, and are replayed when it answers again.
- Every database call made for a request has a deadline, and a breaker stops calling a database
  that is gone (`gate.py`): the replay guard then falls back to a guard of this host's
  processes (`first_use_of_token`), feedback answers 503, and `card_shown_for` says it cannot tell.
- A service that has reached its database once starts again while it is down (the spool's
  `state.json` keeps the schema revision and, when `CDS_PATIENT_HASH_KEY` is unset, the key).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .gate import DatabaseGate, DatabaseUnavailable, describe, is_outage
from .schema import evaluations, feedback, metadata, orders, seen_tokens, service_settings
from .spool import EvaluationWriter

__all__ = [
    "DatabaseUnavailable",
    "FeedbackError",
    "OrderRecord",
    "SignedOrder",
    "Store",
    "StoreError",
    "evaluations",
    "feedback",
    "metadata",
    "orders",
    "seen_tokens",
    "service_settings",
    "utcnow",
]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 0x5B1_AE  # pg_advisory_lock key: one instance migrates at a time
TOKEN_PRUNE_SECONDS = 30  # expired token ids are deleted at most this often per process
DEFAULT_TIMEOUT_SECONDS = 1.0  # CDS_DATABASE_TIMEOUT_SECONDS: one database call made for a request
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024  # CDS_SPOOL_MAX_MB, per process
SHOWN_WINDOW = timedelta(hours=24)  # card_shown_for looks this far back
SHOWN_REMEMBERED = 50_000  # live order-select fingerprints this process remembers itself
TOKENS_SHARED_MAX = 100_000  # token ids accepted while the database was gone, told to it when back

# Feedback limits (docs/utilization.md): the comment is cut, anything else this long is refused.
MAX_COMMENT_CHARS = 4000
MAX_ITEM_BYTES = 16 * 1024  # one feedback item without its userComment, as JSON
MAX_ID_CHARS = 128  # card uuid, suggestion ids, the reason's code
MAX_TEXT_CHARS = 512  # the reason's system and display
MAX_SUGGESTIONS = 20


class FeedbackError(ValueError):
    """A feedback post the service refuses (400); the message says why."""


class StoreError(RuntimeError):
    """The database cannot be used; one line for the operator."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def database_url(settings) -> str:
    """CDS_DATABASE_URL, else the SQLite file CDS_FEEDBACK_DB (created on first use)."""
    if settings.database_url:
        return settings.database_url
    path = Path(settings.feedback_db)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unparseable database URL)"


def make_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(f"CDS_DATABASE_URL is not a database URL: {describe_url(url)}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses nothing
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        # A server that refuses or never completes the handshake ends the attempt after 3 s; a
        # statement the server itself lets wait (a lock) ends after 30 s. A frozen server is the
        # gate's business (gate.py): no timeout of libpq's ends that wait.
        return sa.create_engine(
            url,
            pool_size=8,
            max_overflow=8,
            pool_timeout=5,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 3, "options": "-c statement_timeout=30000"},
        )
    raise StoreError(
        f"CDS_DATABASE_URL must name SQLite or PostgreSQL (postgresql+psycopg://...), got {parsed.get_backend_name()}"
    )


@contextmanager
def _migration_lock(engine: sa.Engine, url: str):
    """One migrator at a time across processes: PostgreSQL's advisory lock, or a file lock beside SQLite."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_ID})
            try:
                yield
            finally:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_ID})
                connection.commit()
        return
    import fcntl

    database = sa.engine.make_url(url).database
    lock_path = Path(f"{database}.migrate-lock") if database and database != ":memory:" else None
    if lock_path is None:
        yield
        return
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: sa.Engine, url: str) -> None:
    """Bring the schema to the newest migration. At the newest already (every start but the first
    after an upgrade), nothing is logged; a real migration logs one line of ours. Alembic's own
    lines (plugins, context) only at debug level."""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    if not log.isEnabledFor(logging.DEBUG):
        alembic_log.setLevel(logging.WARNING)  # before the import: it logs its plugins then
    try:
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        with _migration_lock(engine, url), engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SET LOCAL statement_timeout = 0"))  # a long migration is fine
            current = MigrationContext.configure(connection).get_current_revision()
            if current == head:
                return
            log.info(
                json.dumps({"event": "database-migration", "from": current, "to": head, "database": describe_url(url)})
            )
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        alembic_log.setLevel(level)


def schema_problem(engine: sa.Engine) -> str | None:
    """Why this database is not one of ours at the newest schema (None when it is). Reads only."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            if "evaluations" not in tables or "alembic_version" not in tables:
                return "it is not a spine-imaging CDS database (no evaluations table)"
            current = MigrationContext.configure(connection).get_current_revision()
    except sa.exc.DatabaseError as error:
        return f"it cannot be read as a database ({type(error.orig or error).__name__})"
    if current != head:
        return f"its schema is at {current}, not {head}: start the service once to migrate it"
    return None


def _bounded(value: str, limit: int = 512) -> str:
    """A key column's value: itself when short, else its digest (two long ids must not collide)."""
    if len(value) <= limit:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _key_hash(key: bytes, value: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC (a sixth of hmac.new's time); the same value
    return hmac.digest(key, value.encode("utf-8", "surrogatepass"), "sha256").hex()[:32]


def _text(value: Any, limit: int) -> str | None:
    """A string from a request, fit for any database: cut to `limit`, lone surrogates and NUL
    replaced (PostgreSQL stores neither; JSON lines cannot carry the first)."""
    if value is None or value == "":
        return None
    text = str(value)[:limit]
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass
class OrderRecord:
    """What one hook call decided for one order: the row utilization analysts count."""

    card_uuid: str
    evaluated_at: datetime
    service_id: str
    hook: str
    hook_instance: str
    user_id: str | None
    patient_id: str | None
    encounter_id: str | None
    order_reference: str
    order_code: str | None
    region: str
    contrast: str
    verdict: str
    variant: str | None
    rating: str | None
    red_flags: list[str]
    unread_sources: list[str]
    suggestion_kinds: dict[str, str]
    latency_ms: float | None
    mappings_version: str
    consult_id: str
    mode: str
    synthetic: bool = False
    fingerprint: str = ""  # hooks' Evaluation.fingerprint: the same order and record give the same one
    override_reasons: dict[str, str] | None = None  # the codes the card offered -> display (None: not known)
    http_ms: float | None = None  # the HTTP request's time (app.py fills it when the answer is ready)
    site: str | None = None  # the encounter's location or service, when the EHR named one


@dataclass
class SignedOrder:
    """An order-sign naming an order that is not a spine MRI (any more): the advice may have been taken."""

    patient_id: str | None
    encounter_id: str | None
    order_reference: str
    order_code: str | None
    signed_at: datetime
    synthetic: bool = False


@dataclass
class _Outage:
    """What the replay guard did while the database was gone (reset when it is back)."""

    fallbacks: int = 0
    logged: bool = False
    tokens: list[tuple[str, str, float]] = field(default_factory=list)


def default_spool_dir(url: str) -> Path:
    """Beside an SQLite file (`<file>-spool/`); for PostgreSQL `var/spool/<database id>/`."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            return Path(f"{parsed.database}-spool")
        return Path(tempfile.gettempdir()) / f"cds-spool-{database_id(url)}"
    return Path("var/spool") / database_id(url)


def database_id(url: str) -> str:
    """Names one database (server, port, database; or the SQLite file), never its password."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = str(Path(parsed.database).resolve()) if parsed.database and parsed.database != ":memory:" else ""
        identity = f"sqlite:{name}"
    else:
        identity = f"{parsed.get_backend_name()}://{parsed.host}:{parsed.port or 5432}/{parsed.database}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class Store:
    """The database, shared by every thread of a server process (SQLAlchemy's pool)."""

    def __init__(
        self,
        url: str,
        patient_hash_key: str | None = None,
        migrate_schema: bool = True,
        spool_dir: Path | str | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self.database_id = database_id(url)
        self.spool_dir = Path(spool_dir) if spool_dir else default_spool_dir(url)
        self.gate = DatabaseGate(timeout, describe_url(url))
        self.started_without_database: str | None = None  # why, when the service started from its spool
        self._schema_unchecked = False
        try:
            if migrate_schema:
                migrate(self.engine, url)
            key = patient_hash_key or self._stored_patient_key()
            self._remember_state(None if patient_hash_key else key)
        except sa.exc.DBAPIError as error:
            key = self._start_from_spool(error, patient_hash_key)
        self.patient_key = key.encode()
        self._pruned_at = 0.0
        self._shown: dict[str, float] = {}  # fingerprint -> time, live order-select cards of this process
        self._outage = _Outage()
        self._outage_lock = threading.Lock()
        self._tokens_pruned_at = 0.0
        self.writer = EvaluationWriter(
            self.spool_dir, self.database_id, self.gate, self._write_items, self._probe, spool_max_bytes
        )
        self.gate.on_restore(self._after_outage)

    @classmethod
    def from_settings(cls, settings, migrate: bool = True) -> Store:
        max_mb = getattr(settings, "spool_max_mb", None)
        return cls(
            database_url(settings),
            settings.patient_hash_key,
            migrate_schema=migrate,
            spool_dir=getattr(settings, "spool_dir", None),
            spool_max_bytes=int(max_mb * 1024 * 1024) if max_mb else DEFAULT_SPOOL_MAX_BYTES,
            timeout=getattr(settings, "database_timeout_seconds", None) or DEFAULT_TIMEOUT_SECONDS,
        )

    def start(self) -> None:
        """In a server process (after gunicorn forks): replay what an earlier process left spooled."""
        self.writer.start()

    # ------------------------------------------------------------------ start-up without the database
    @property
    def _state_path(self) -> Path:
        return self.spool_dir / "state.json"

    def _remember_state(self, stored_key: str | None) -> None:
        """What a restart needs while the database is down: that this database was reached, at
        which schema, and the patient-hash key kept in it (when CDS_PATIENT_HASH_KEY is unset)."""
        from alembic.script import ScriptDirectory

        state = {"database": self.database_id, "schema": ScriptDirectory(str(MIGRATIONS)).get_current_head()}
        if stored_key:
            state["patient_hash_key"] = stored_key
        try:
            if self._state_path.is_file() and json.loads(self._state_path.read_text()) == state:
                return
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            temporary = self._state_path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle)
            os.replace(temporary, self._state_path)
        except (OSError, ValueError) as error:
            log.warning(json.dumps({"event": "spool-state-not-written", "error": str(error)}))

    def _start_from_spool(self, error: sa.exc.DBAPIError, patient_hash_key: str | None) -> str:
        reason = describe(error)
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            state = None
        key = patient_hash_key or (state or {}).get("patient_hash_key")
        if not is_outage(error) or not state or state.get("database") != self.database_id or not key:
            raise StoreError(
                f"cannot use the database {describe_url(self.url)}: "
                f"{(str(error.orig or error).strip().splitlines() or ['?'])[0]}"
            ) from None
        self.started_without_database = reason
        self._schema_unchecked = True
        self.gate.trip(reason)
        log.warning(
            json.dumps(
                {
                    "event": "started-without-database",
                    "database": describe_url(self.url),
                    "reason": reason,
                    "spool": str(self.spool_dir),
                    "message": "hooks are answered and spooled; the schema is checked and the spool "
                    "replayed when the database answers",
                }
            )
        )
        return str(key)

    def _stored_patient_key(self) -> str:
        """CDS_PATIENT_HASH_KEY when unset: a random key kept in the database, so every instance
        hashes a patient alike and the raw id is never stored."""
        with self.engine.begin() as connection:
            connection.execute(
                self._insert_ignore(service_settings, ["name"]),
                {"name": "patient_hash_key", "value": secrets.token_hex(32)},
            )
            return connection.execute(
                sa.select(service_settings.c.value).where(service_settings.c.name == "patient_hash_key")
            ).scalar_one()

    def _insert_ignore(self, table, keys):
        return self._insert(table).on_conflict_do_nothing(index_elements=keys)

    def _probe(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def _after_outage(self) -> None:
        """The database answers again (on the writer's thread): migrate if the service started
        without it, and tell it the token ids accepted meanwhile, so no instance takes them again."""
        if self._schema_unchecked:
            try:
                migrate(self.engine, self.url)
                self._schema_unchecked = False
            except Exception as error:
                self.gate.trip(f"migration failed: {describe(error)}")
                return
        with self._outage_lock:
            outage, self._outage = self._outage, _Outage()
        if outage.fallbacks:
            log.warning(
                json.dumps(
                    {
                        "event": "replay-guard-restored",
                        "tokens_checked_here_only": outage.fallbacks,
                    }
                )
            )
        if outage.tokens:
            rows = [{"iss": _bounded(i), "jti": _bounded(j), "expires_at": e} for i, j, e in outage.tokens]
            with contextlib.suppress(Exception), self.engine.begin() as connection:
                connection.execute(self._insert_ignore(seen_tokens, ["iss", "jti"]), rows)

    # ------------------------------------------------------------------ evaluations
    def patient_hash(self, patient_id: str | None) -> str | None:
        return _key_hash(self.patient_key, patient_id) if patient_id else None

    def _order_key(self, patient_id: str | None, encounter_id: str | None, reference: str) -> str:
        # The same draft order of the same patient in the same encounter is one order, whichever
        # hook (select or sign) rated it and however often.
        identity = json.dumps([patient_id or "", encounter_id or "", reference])
        return _key_hash(self.patient_key, identity)

    def order_key(self, record: OrderRecord) -> str:
        return self._order_key(record.patient_id, record.encounter_id, record.order_reference)

    def _row(self, record: OrderRecord) -> dict:
        return {
            "k": "e",
            "card_uuid": _text(record.card_uuid, 64),
            "order_key": self.order_key(record),
            "evaluated_at": record.evaluated_at,
            "service_id": record.service_id,
            "hook": record.hook,
            "hook_instance": _text(record.hook_instance, 128) or "",
            "user_id": _text(record.user_id, 256),
            "patient_hash": self.patient_hash(record.patient_id),
            "order_reference": _text(record.order_reference, 256) or "",
            "order_code": _text(record.order_code, 256),
            "region": record.region,
            "contrast": record.contrast,
            "verdict": record.verdict,
            "variant": record.variant,
            "rating": record.rating,
            "red_flags": _dumps(sorted(set(record.red_flags))),
            "unread_sources": _dumps(sorted(record.unread_sources)),
            "suggestion_kinds": _dumps(record.suggestion_kinds),
            "latency_ms": record.latency_ms,
            "mappings_version": record.mappings_version,
            "consult_id": record.consult_id,
            "mode": record.mode,
            "synthetic": record.synthetic,
            "fingerprint": _text(record.fingerprint, 64),
            "override_reasons": None if record.override_reasons is None else _dumps(record.override_reasons),
            "http_ms": record.http_ms,
            "site": _text(record.site, 256),
        }

    def _signed_row(self, signed: SignedOrder) -> dict:
        return {
            "k": "s",
            "order_key": self._order_key(signed.patient_id, signed.encounter_id, signed.order_reference),
            "signed_at": signed.signed_at,
            "code": _text(signed.order_code, 256),
        }

    def record(self, records: list[OrderRecord], signed: list[SignedOrder] | tuple = ()) -> bool:
        """Spool the cards (and orders signed as another study) for the writer: the hook waits for
        one file append, never for the database. False when the spool could not keep them (logged)."""
        items = [self._row(record) for record in records] + [self._signed_row(s) for s in signed]
        now = time.time()
        for record in records:
            if record.fingerprint and record.mode == "live" and record.hook == "order-select":
                self._shown[record.fingerprint] = now
                if len(self._shown) > SHOWN_REMEMBERED:
                    with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                        del self._shown[next(iter(self._shown))]
        return self.writer.put(items)

    def write_evaluations(self, records: list[OrderRecord], signed: list[SignedOrder] | tuple = ()) -> None:
        """Write now, on this thread (the demo's history); the service goes through `record`."""
        self._write_items([self._row(record) for record in records] + [self._signed_row(s) for s in signed])

    def _write_items(self, items: list[dict]) -> None:
        """One transaction: the new cards, each the latest of its order if newest, and the orders
        signed as another study. Idempotent: a card already there is neither inserted nor counted."""
        columns = [column.name for column in evaluations.columns]
        rows: list[dict[str, Any]] = [
            {name: item.get(name) for name in columns} for item in items if item.get("k") == "e"
        ]
        signs = [item for item in items if item.get("k") == "s"]
        with self.engine.begin() as connection:
            if rows:
                inserted = set(
                    connection.execute(
                        self._insert_ignore(evaluations, ["card_uuid"]).returning(evaluations.c.card_uuid), rows
                    ).scalars()
                )
                per_order: dict[str, dict] = {}
                for row in sorted(rows, key=lambda r: r["evaluated_at"]):
                    if row["card_uuid"] not in inserted:
                        continue
                    seen = per_order.get(row["order_key"])
                    per_order[row["order_key"]] = {
                        "order_key": row["order_key"],
                        "latest_card_uuid": row["card_uuid"],
                        "latest_at": row["evaluated_at"],
                        "first_at": seen["first_at"] if seen else row["evaluated_at"],
                        "evaluations": (seen["evaluations"] if seen else 0) + 1,
                    }
                if per_order:
                    connection.execute(self._order_upsert, list(per_order.values()))
            if signs:
                connection.execute(
                    orders.update()
                    .where(
                        orders.c.order_key == sa.bindparam("key"),
                        sa.or_(orders.c.signed_other_at.is_(None), orders.c.signed_other_at < sa.bindparam("at")),
                    )
                    .values(signed_other_at=sa.bindparam("at"), signed_other_code=sa.bindparam("code")),
                    [{"key": s["order_key"], "at": s["signed_at"], "code": s.get("code")} for s in signs],
                )

    @cached_property
    def _order_upsert(self):
        """One statement for every order of a batch: the newer card wins, the count adds up."""
        upsert = self._insert(orders)
        newer = upsert.excluded.latest_at >= orders.c.latest_at
        earliest = sa.func.least if self.dialect == "postgresql" else sa.func.min
        return upsert.on_conflict_do_update(
            index_elements=["order_key"],
            set_={
                "latest_card_uuid": sa.case((newer, upsert.excluded.latest_card_uuid), else_=orders.c.latest_card_uuid),
                "latest_at": sa.case((newer, upsert.excluded.latest_at), else_=orders.c.latest_at),
                "first_at": earliest(orders.c.first_at, upsert.excluded.first_at),
                "evaluations": orders.c.evaluations + upsert.excluded.evaluations,
            },
        )

    # ------------------------------------------------------------------ order-sign after order-select
    def card_shown_for(self, fingerprint: str) -> bool | None:
        """Whether order-select issued a live-mode card with this fingerprint in the last 24 hours:
        this process's own recent cards, then the database (any instance's; within the request
        deadline). None when the database cannot answer in time. Never raises."""
        try:
            if not fingerprint:
                return False
            seen = self._shown.get(fingerprint)
            if seen is not None and time.time() - seen < SHOWN_WINDOW.total_seconds():
                return True
            since = utcnow() - SHOWN_WINDOW
            query = (
                sa.select(evaluations.c.card_uuid)
                .where(
                    evaluations.c.fingerprint == fingerprint[:64],
                    evaluations.c.hook == "order-select",
                    evaluations.c.mode == "live",
                    evaluations.c.evaluated_at >= since,
                )
                .limit(1)
            )

            def look() -> bool:
                with self.engine.connect() as connection:
                    return connection.execute(query).first() is not None

            if self.gate.call(look):
                return True
            # answered by another worker of this host a moment ago, not written yet
            spooled = self.writer.find({fingerprint[:64]}, key="fingerprint").get(fingerprint[:64])
            return bool(
                spooled
                and spooled.get("hook") == "order-select"
                and spooled.get("mode") == "live"
                and spooled["evaluated_at"] >= since
            )
        except DatabaseUnavailable:
            return None
        except Exception:
            log.exception("card_shown_for failed")
            return None

    # ------------------------------------------------------------------ feedback
    def _cards_in_database(self, card_uuids: set[str]) -> dict[str, dict]:
        def look() -> dict[str, dict]:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    sa.select(
                        evaluations.c.card_uuid, evaluations.c.suggestion_kinds, evaluations.c.override_reasons
                    ).where(evaluations.c.card_uuid.in_(sorted(card_uuids)))
                ).all()
            return {row.card_uuid: row._asdict() for row in rows}

        return self.gate.call(look)

    def _cards(self, card_uuids: set[str]) -> dict[str, dict]:
        """The cards by uuid, looked for once: the database, this host's spool (cards another
        worker answered a moment ago, or waiting for the database), the database again (written
        meanwhile). DatabaseUnavailable when the database cannot be asked."""
        found = self._cards_in_database(card_uuids)
        missing = card_uuids - set(found)
        if missing:
            found.update(self.writer.find(missing))
            missing -= set(found)
        if missing:
            found.update(self._cards_in_database(missing))
        return found

    def record_feedback(self, service_id: str, body) -> int:
        """Store every item of a feedback POST; returns how many were new. FeedbackError (400)
        names what is wrong; DatabaseUnavailable (503) when the database cannot be reached."""
        items = parse_feedback(body)
        if self.gate.down:
            raise DatabaseUnavailable(f"{self.gate.database} is unreachable ({self.gate.reason})")
        cards = self._cards({item["card"] for item in items})
        unknown = sorted({item["card"] for item in items} - set(cards))
        if unknown:
            raise FeedbackError(
                f"no card with uuid {unknown[0]!r} was issued by this service"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        now = utcnow()
        rows = []
        for index, item in enumerate(items):
            card = cards[item["card"]]
            kinds_by_uuid = json.loads(card.get("suggestion_kinds") or "{}")
            offered = None if card.get("override_reasons") is None else json.loads(card["override_reasons"])
            accepted = [kinds_by_uuid.get(s["id"], "unknown") for s in item["acceptedSuggestions"]]
            reason = item["overrideReason"].get("reason") or {}
            code = reason.get("code") or None
            display = reason.get("display")
            if code is not None and offered is not None:
                if code not in offered:
                    allowed = ", ".join(sorted(offered)) or "none (it offered no override reasons)"
                    raise FeedbackError(
                        f"feedback[{index}].overrideReason.reason.code {code!r} is not a reason this card "
                        f"offered; it offered: {allowed}"
                    )
                display = offered[code]  # the card's own words (the sandbox sends the code only)
            rows.append(
                {
                    "dedup_key": item["dedup_key"],
                    "service_id": service_id,
                    "card_uuid": item["card"],
                    "outcome": item["outcome"],
                    "accepted_kinds": json.dumps(accepted),
                    "override_code": code,
                    "override_display": display and str(display)[:MAX_TEXT_CHARS],
                    "user_comment": item["comment"],
                    "outcome_timestamp": item["outcomeTimestamp"],
                    "received_at": now,
                    "raw": item["raw"],
                }
            )

        def store() -> int:
            with self.engine.begin() as connection:
                result = connection.execute(self._insert_ignore(feedback, ["dedup_key"]).returning(feedback.c.id), rows)
                return len(result.fetchall())

        return self.gate.call(store)

    # ------------------------------------------------------------------ replay guard
    def first_use_of_token(self, iss: str, jti: str, expires_at: float) -> bool:
        """True the first time an (iss, jti) is seen, on any instance sharing this database. While
        the database is gone: on any process of this host sharing the spool directory (counted,
        logged once per outage; a token lives at most CDS_JWT_MAX_LIFETIME_SECONDS)."""
        if not self.gate.down:
            try:
                return self.gate.call(lambda: self._first_use_in_database(iss, jti, expires_at))
            except DatabaseUnavailable:
                pass
        return self._first_use_here(iss, jti, expires_at)

    def _first_use_in_database(self, iss: str, jti: str, expires_at: float) -> bool:
        now = time.time()
        with self.engine.begin() as connection:
            if now - self._pruned_at > TOKEN_PRUNE_SECONDS:
                # an index range scan over expired rows only, at most every 30 s per process
                self._pruned_at = now
                connection.execute(seen_tokens.delete().where(seen_tokens.c.expires_at < now - 60))
            inserted = connection.execute(
                self._insert_ignore(seen_tokens, ["iss", "jti"]).returning(seen_tokens.c.jti),
                {"iss": _bounded(iss), "jti": _bounded(jti), "expires_at": expires_at},
            )
            return inserted.first() is not None

    def _first_use_here(self, iss: str, jti: str, expires_at: float) -> bool:
        """The guard of this host: one file per token id, created only if absent (O_EXCL is atomic
        across processes), in a folder per minute of expiry, the expired folders removed."""
        digest = hashlib.sha256(f"{iss}\0{jti}".encode("utf-8", "surrogatepass")).hexdigest()[:40]
        folder = self.spool_dir / "tokens" / str(int(expires_at // 60) + 1)
        with self._outage_lock:
            self._outage.fallbacks += 1
            first_of_outage = not self._outage.logged
            self._outage.logged = True
        if first_of_outage:
            log.warning(
                json.dumps(
                    {
                        "event": "replay-guard-fallback",
                        "reason": self.gate.reason or "the database did not answer",
                        "guard": "this host's processes only, until the database answers",
                    }
                )
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.close(os.open(folder / digest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        except OSError as error:  # no local guard either: refuse rather than allow a replay
            log.error(json.dumps({"event": "replay-guard-unavailable", "error": str(error)}))
            return False
        with self._outage_lock:
            if len(self._outage.tokens) < TOKENS_SHARED_MAX:
                self._outage.tokens.append((iss, jti, expires_at))
        now = time.time()
        if now - self._tokens_pruned_at > TOKEN_PRUNE_SECONDS:
            self._tokens_pruned_at = now
            for old in (self.spool_dir / "tokens").iterdir():
                if old.name.isdigit() and int(old.name) * 60 < now - 60:
                    shutil.rmtree(old, ignore_errors=True)
        return True

    @property
    def replay_guard_fallbacks(self) -> int:
        return self._outage.fallbacks

    def health(self) -> dict:
        """For /healthz: the database as this process last saw it, and what waits in its spool."""
        return {
            "database_reachable": not self.gate.down,
            "spooled_rows": self.writer.pending,
            "spooled_bytes": self.writer.spooled_bytes,
            "spool_refused_rows": self.writer.dropped,
            "replay_guard_fallbacks": self._outage.fallbacks,
        }

    def close(self) -> None:
        self.writer.close()
        self.engine.dispose()


def _bad_text(value: Any, where: str) -> str | None:
    """Where the item holds text no database stores (a lone surrogate, NUL), or None."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{path} contains a NUL character"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{path} is not valid Unicode text (a lone surrogate)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and (bad := _bad_text(key, f"{path} (a key)")):
                    return bad
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def parse_feedback(body) -> list[dict]:
    """The feedback items, each checked and normalised; FeedbackError names the first bad field.
    Each item gets `comment` (cut to MAX_COMMENT_CHARS), `raw` (the item without its comment, as
    stored) and `dedup_key` (the whole item's digest: a retry is stored once)."""
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise FeedbackError("'feedback' must be a non-empty array")
    if len(items) > 100:
        raise FeedbackError("at most 100 feedback items per post")
    checked = []
    for index, item in enumerate(items):
        where = f"feedback[{index}]"
        if not isinstance(item, dict):
            raise FeedbackError(f"{where} must be an object")
        if not isinstance(item.get("card"), str) or not item["card"]:
            raise FeedbackError(f"{where}.card is required (the card's uuid)")
        if len(item["card"]) > MAX_ID_CHARS:
            raise FeedbackError(f"{where}.card is longer than {MAX_ID_CHARS} characters: not a card of this service")
        if item.get("outcome") not in ("accepted", "overridden"):
            raise FeedbackError(f"{where}.outcome must be 'accepted' or 'overridden'")
        if not isinstance(item.get("outcomeTimestamp"), str):
            raise FeedbackError(f"{where}.outcomeTimestamp is required (a string)")
        if len(item["outcomeTimestamp"]) > 64:
            raise FeedbackError(f"{where}.outcomeTimestamp is longer than 64 characters")
        accepted = item.get("acceptedSuggestions", [])
        if not isinstance(accepted, list) or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) for s in accepted
        ):
            raise FeedbackError(f'{where}.acceptedSuggestions must be an array of {{"id": "<uuid>"}}')
        if len(accepted) > MAX_SUGGESTIONS or any(len(s["id"]) > MAX_ID_CHARS for s in accepted):
            raise FeedbackError(
                f"{where}.acceptedSuggestions: at most {MAX_SUGGESTIONS} ids of at most {MAX_ID_CHARS} characters"
            )
        override = item.get("overrideReason", {})
        if not isinstance(override, dict):
            raise FeedbackError(f"{where}.overrideReason must be an object")
        reason = override.get("reason", {})
        if not isinstance(reason, dict) or not all(
            isinstance(reason.get(k), (str, type(None))) for k in ("code", "system", "display")
        ):
            raise FeedbackError(f"{where}.overrideReason.reason must be a Coding (code, system, display strings)")
        for name, limit in (("code", MAX_ID_CHARS), ("system", MAX_TEXT_CHARS), ("display", MAX_TEXT_CHARS)):
            if len(reason.get(name) or "") > limit:
                raise FeedbackError(f"{where}.overrideReason.reason.{name} is longer than {limit} characters")
        comment = override.get("userComment")
        if not isinstance(comment, (str, type(None))):
            raise FeedbackError(f"{where}.overrideReason.userComment must be a string")
        bad = _bad_text(item, where)
        if bad:
            raise FeedbackError(bad)
        whole = json.dumps(item, sort_keys=True)
        without_comment = {**item, "overrideReason": {k: v for k, v in override.items() if k != "userComment"}}
        if "overrideReason" not in item:
            without_comment.pop("overrideReason")
        raw = json.dumps(without_comment, sort_keys=True)
        if len(raw) > MAX_ITEM_BYTES:
            raise FeedbackError(f"{where} is larger than {MAX_ITEM_BYTES // 1024} KiB without its userComment")
        if comment is not None and len(comment) > MAX_COMMENT_CHARS:
            comment = comment[:MAX_COMMENT_CHARS] + f" [cut: {len(comment)} characters in all]"
        checked.append(
            {
                **item,
                "acceptedSuggestions": accepted,
                "overrideReason": override,
                "comment": comment or None,
                "raw": raw,
                "dedup_key": hashlib.sha256(whole.encode()).hexdigest(),
            }
        )
    return checked
