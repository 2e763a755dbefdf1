"""The service's database: every evaluated order, the feedback on its card, and seen token ids.

One schema (SQLAlchemy Core, Alembic migrations in `migrations/`) on the embedded SQLite file by
default or on PostgreSQL (`CDS_DATABASE_URL=postgresql+psycopg://...`), so several instances
behind a load balancer share feedback, the evaluation log and replay protection.

- `evaluations`: one row per card issued (a hook call rates each MRI order with one card).
- `orders`: one row per order (patient, encounter, order id): the latest card counts, so an
  order re-fired by order-select, then signed, is one order for the analyst, not three.
- `feedback`: CDS Hooks feedback, joined to its card; a retry is stored once.
- `seen_tokens`: client JWT ids (jti) until they expire: a token is accepted once, on any instance.

Evaluations are written off the request path by a background writer in batches; it is flushed
when the process exits (SIGTERM included) and before a feedback post looks a card up.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 0x5B1_AE  # pg_advisory_lock key: one instance migrates at a time
TOKEN_PRUNE_SECONDS = 30  # expired token ids are deleted at most this often per process
FEEDBACK_WAIT_SECONDS = 2.0  # how long an unknown card is looked for (another instance's writer)
BATCH_SECONDS = 0.5
MAX_BATCH = 500

metadata = sa.MetaData()

evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("order_key", sa.String(64), nullable=False, index=True),
    sa.Column("evaluated_at", sa.DateTime, nullable=False, index=True),  # UTC
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("hook", sa.String(32), nullable=False),
    sa.Column("hook_instance", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(256)),
    sa.Column("patient_hash", sa.String(64)),
    sa.Column("order_reference", sa.String(256), nullable=False),
    sa.Column("order_code", sa.String(256)),
    sa.Column("region", sa.String(32)),
    sa.Column("contrast", sa.String(32)),
    sa.Column("verdict", sa.String(32), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("rating", sa.String(32)),
    sa.Column("red_flags", sa.Text, nullable=False),  # JSON list of concept ids
    sa.Column("unread_sources", sa.Text, nullable=False),  # JSON list of prefetch keys
    sa.Column("suggestion_kinds", sa.Text, nullable=False),  # JSON {suggestion uuid: kind}
    sa.Column("latency_ms", sa.Float),
    sa.Column("mappings_version", sa.String(32)),
    sa.Column("consult_id", sa.String(64)),
    sa.Column("mode", sa.String(16), nullable=False),  # live | shadow
    sa.Column("synthetic", sa.Boolean, nullable=False, default=False),  # demo history, never real
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_key", sa.String(64), primary_key=True),
    sa.Column("latest_card_uuid", sa.String(64), nullable=False),
    sa.Column("latest_at", sa.DateTime, nullable=False, index=True),
    sa.Column("first_at", sa.DateTime, nullable=False),
    sa.Column("evaluations", sa.Integer, nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("card_uuid", sa.String(64), nullable=False, index=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("accepted_kinds", sa.Text, nullable=False),  # JSON list of cards.SUGGEST_* kinds
    sa.Column("override_code", sa.String(128)),
    sa.Column("override_display", sa.String(512)),
    sa.Column("user_comment", sa.Text),
    sa.Column("outcome_timestamp", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
)

seen_tokens = sa.Table(
    "seen_tokens",
    metadata,
    sa.Column("iss", sa.String(512), primary_key=True),
    sa.Column("jti", sa.String(512), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

service_settings = sa.Table(
    "service_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


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
        return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)
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
    return value if len(value) <= limit else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _key_hash(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


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


class Store:
    """The database, shared by every thread of a server process (SQLAlchemy's pool)."""

    def __init__(self, url: str, patient_hash_key: str | None = None, migrate_schema: bool = True):
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        try:
            if migrate_schema:
                migrate(self.engine, url)
            self.patient_key = (patient_hash_key or self._stored_patient_key()).encode()
        except sa.exc.DBAPIError as error:  # unreachable, refused, no permission, not a database
            raise StoreError(
                f"cannot use the database {describe_url(url)}: "
                f"{(str(error.orig or error).strip().splitlines() or ['?'])[0]}"
            ) from None
        self._pruned_at = 0.0
        self.writer = EvaluationWriter(self)

    @classmethod
    def from_settings(cls, settings, migrate: bool = True) -> Store:
        return cls(database_url(settings), settings.patient_hash_key, migrate_schema=migrate)

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

    # ------------------------------------------------------------------ evaluations
    def patient_hash(self, patient_id: str | None) -> str | None:
        return _key_hash(self.patient_key, patient_id) if patient_id else None

    def order_key(self, record: OrderRecord) -> str:
        # The same draft order of the same patient in the same encounter is one order, whichever
        # hook (select or sign) rated it and however often.
        identity = json.dumps([record.patient_id or "", record.encounter_id or "", record.order_reference])
        return _key_hash(self.patient_key, identity)

    def _row(self, record: OrderRecord) -> dict:
        return {
            "card_uuid": record.card_uuid,
            "order_key": self.order_key(record),
            "evaluated_at": record.evaluated_at,
            "service_id": record.service_id,
            "hook": record.hook,
            "hook_instance": record.hook_instance[:128],
            "user_id": (record.user_id or None) and record.user_id[:256],
            "patient_hash": self.patient_hash(record.patient_id),
            "order_reference": record.order_reference[:256],
            "order_code": (record.order_code or None) and record.order_code[:256],
            "region": record.region,
            "contrast": record.contrast,
            "verdict": record.verdict,
            "variant": record.variant,
            "rating": record.rating,
            "red_flags": json.dumps(sorted(set(record.red_flags))),
            "unread_sources": json.dumps(sorted(record.unread_sources)),
            "suggestion_kinds": json.dumps(record.suggestion_kinds, sort_keys=True),
            "latency_ms": record.latency_ms,
            "mappings_version": record.mappings_version,
            "consult_id": record.consult_id,
            "mode": record.mode,
            "synthetic": record.synthetic,
        }

    def write_evaluations(self, records: list[OrderRecord]) -> None:
        """Insert the cards and make each the latest of its order (one transaction, two statements)."""
        if not records:
            return
        rows = [self._row(record) for record in records]
        per_order: dict[str, dict] = {}
        for row in sorted(rows, key=lambda r: r["evaluated_at"]):
            seen = per_order.get(row["order_key"])
            per_order[row["order_key"]] = {
                "order_key": row["order_key"],
                "latest_card_uuid": row["card_uuid"],
                "latest_at": row["evaluated_at"],
                "first_at": seen["first_at"] if seen else row["evaluated_at"],
                "evaluations": (seen["evaluations"] if seen else 0) + 1,
            }
        with self.engine.begin() as connection:
            connection.execute(self._insert_ignore(evaluations, ["card_uuid"]), rows)
            connection.execute(self._order_upsert, list(per_order.values()))

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

    def record(self, records: list[OrderRecord]) -> None:
        """Queue the cards for the background writer (the hook does not wait for the database)."""
        self.writer.put(records)

    # ------------------------------------------------------------------ feedback
    def _cards(self, card_uuids: set[str]) -> dict:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(evaluations.c.card_uuid, evaluations.c.suggestion_kinds).where(
                    evaluations.c.card_uuid.in_(sorted(card_uuids))
                )
            ).all()
        return {row.card_uuid: row for row in rows}

    def _wait_for_cards(self, card_uuids: set[str]) -> dict:
        """The cards by uuid, waiting briefly for ones still in a writer's queue: this process's is
        flushed at once; another instance's writes within its batch interval."""
        deadline = time.monotonic() + FEEDBACK_WAIT_SECONDS
        found = self._cards(card_uuids)
        if len(found) < len(card_uuids):
            self.writer.flush(timeout=FEEDBACK_WAIT_SECONDS)
        while len(found) < len(card_uuids) and time.monotonic() < deadline:
            found.update(self._cards(card_uuids - set(found)))
            if len(found) < len(card_uuids):
                time.sleep(BATCH_SECONDS / 2)
        return found

    def record_feedback(self, service_id: str, body, override_displays: dict[str, str] | None = None) -> int:
        """Store every item of a feedback POST; returns how many were new. FeedbackError names what is wrong.
        `override_displays`: the service's own words for its override reason codes (a client may send codes only)."""
        items = parse_feedback(body)
        cards = self._wait_for_cards({item["card"] for item in items})
        unknown = sorted({item["card"] for item in items} - set(cards))
        if unknown:
            raise FeedbackError(
                f"no card with uuid {unknown[0]!r} was issued by this service"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        displays = override_displays or {}
        now = utcnow()
        rows = []
        for item in items:
            kinds_by_uuid = json.loads(cards[item["card"]].suggestion_kinds or "{}")
            accepted = [kinds_by_uuid.get(s["id"], "unknown") for s in item["acceptedSuggestions"]]
            reason = item["overrideReason"].get("reason") or {}
            code = reason.get("code")
            # The CDS Hooks sandbox sends the code only: the display is ours, by code.
            display = (displays.get(code) if isinstance(code, str) else None) or reason.get("display")
            raw = json.dumps(item, sort_keys=True)
            rows.append(
                {
                    "dedup_key": hashlib.sha256(f"{service_id}\0{raw}".encode()).hexdigest(),
                    "service_id": service_id,
                    "card_uuid": item["card"],
                    "outcome": item["outcome"],
                    "accepted_kinds": json.dumps(accepted),
                    "override_code": code and str(code)[:128],
                    "override_display": display and str(display)[:512],
                    "user_comment": item["overrideReason"].get("userComment"),
                    "outcome_timestamp": item["outcomeTimestamp"][:64],
                    "received_at": now,
                    "raw": raw,
                }
            )
        with self.engine.begin() as connection:
            result = connection.execute(self._insert_ignore(feedback, ["dedup_key"]).returning(feedback.c.id), rows)
            return len(result.fetchall())

    # ------------------------------------------------------------------ replay guard
    def first_use_of_token(self, iss: str, jti: str, expires_at: float) -> bool:
        """True the first time an (iss, jti) is seen, on any instance sharing this database."""
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

    def close(self) -> None:
        self.writer.close()
        self.engine.dispose()


def parse_feedback(body) -> list[dict]:
    """The feedback items, each checked and normalised; FeedbackError names the first bad field."""
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
        if item.get("outcome") not in ("accepted", "overridden"):
            raise FeedbackError(f"{where}.outcome must be 'accepted' or 'overridden'")
        if not isinstance(item.get("outcomeTimestamp"), str):
            raise FeedbackError(f"{where}.outcomeTimestamp is required (a string)")
        accepted = item.get("acceptedSuggestions", [])
        if not isinstance(accepted, list) or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) for s in accepted
        ):
            raise FeedbackError(f'{where}.acceptedSuggestions must be an array of {{"id": "<uuid>"}}')
        override = item.get("overrideReason", {})
        if not isinstance(override, dict):
            raise FeedbackError(f"{where}.overrideReason must be an object")
        reason = override.get("reason", {})
        if not isinstance(reason, dict) or not all(
            isinstance(reason.get(k), (str, type(None))) for k in ("code", "system", "display")
        ):
            raise FeedbackError(f"{where}.overrideReason.reason must be a Coding (code, system, display strings)")
        if not isinstance(override.get("userComment"), (str, type(None))):
            raise FeedbackError(f"{where}.overrideReason.userComment must be a string")
        checked.append({**item, "acceptedSuggestions": accepted, "overrideReason": override})
    return checked


class EvaluationWriter:
    """Writes queued evaluations in batches on its own thread; nothing queued is lost at exit.

    A hook only appends to a list under a lock: waking the writer for every card would hand the
    interpreter lock back and forth once per request (measured: a tenth of the throughput). The
    writer wakes every BATCH_SECONDS, or at once when asked to flush or close.
    """

    def __init__(self, store: Store):
        self.store = store
        self._buffer: list[OrderRecord] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._written = threading.Condition(self._lock)
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._closing = False

    def put(self, records: list[OrderRecord]) -> None:
        if not records:
            return
        with self._lock:
            self._buffer.extend(records)
            self._pending += len(records)
            if self._thread is None or not self._thread.is_alive():
                # started on first use: after gunicorn forks, so each worker has its own thread
                self._thread = threading.Thread(target=self._run, name="evaluation-writer", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def _run(self) -> None:
        while True:
            self._wake.wait(BATCH_SECONDS)
            self._wake.clear()
            with self._lock:
                batch, self._buffer = self._buffer, []
                closing = self._closing
            for start in range(0, len(batch), MAX_BATCH):
                self._write(batch[start : start + MAX_BATCH])
            if closing:
                with self._lock:
                    if not self._buffer:
                        return

    def _write(self, batch: list[OrderRecord]) -> None:
        try:
            for attempt in range(5):
                try:
                    self.store.write_evaluations(batch)
                    return
                except sa.exc.OperationalError as error:  # locked, unreachable: worth another try
                    log.warning(
                        json.dumps(
                            {
                                "event": "evaluation-log-retry",
                                "rows": len(batch),
                                "attempt": attempt + 1,
                                "error": type(error).__name__,
                            }
                        )
                    )
                    time.sleep(0.2 * (attempt + 1))
                except Exception:  # a row the database refuses must not take the batch with it
                    self._write_one_by_one(batch)
                    return
            log.error(
                json.dumps(
                    {"event": "evaluation-log-failed", "rows": len(batch), "cards": [r.card_uuid for r in batch][:20]}
                )
            )
        finally:
            with self._written:
                self._pending -= len(batch)
                self._written.notify_all()

    def _write_one_by_one(self, batch: list[OrderRecord]) -> None:
        for record in batch:
            try:
                self.store.write_evaluations([record])
            except Exception as error:
                log.error(
                    json.dumps(
                        {"event": "evaluation-log-row-refused", "card": record.card_uuid, "error": type(error).__name__}
                    )
                )

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far, now; False if that took longer than `timeout`."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._written:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(min(left, 0.05))
                self._wake.set()
        return True

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=30)
