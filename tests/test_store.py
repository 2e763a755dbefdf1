"""The evaluation log, feedback and replay guard on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import ClassVar

import pytest
import sqlalchemy as sa

from cds_service.cli import fixtures
from cds_service.utilization.charts import render_html
from cds_service.utilization.render import render_csv, render_json, render_text
from cds_service.utilization.report import Options, Window, build_report
from cds_service.utilization.store import FeedbackError, OrderRecord, Store, evaluations, feedback, metadata, utcnow

SELECT = "/cds-services/spine-mri-order-select"
SIGN = "/cds-services/spine-mri-order-sign"


def record(
    card: str,
    order: str = "ServiceRequest/mri-1",
    verdict: str = "low-value",
    user: str = "Practitioner/a",
    hook: str = "order-select",
    when: datetime | None = None,
    **changes,
) -> OrderRecord:
    base = OrderRecord(
        card_uuid=card,
        evaluated_at=when or utcnow(),
        service_id=f"spine-mri-{hook}",
        hook=hook,
        hook_instance=f"hi-{card}",
        user_id=user,
        patient_id="patient-raw-id-123",
        encounter_id="enc-1",
        order_reference=order,
        order_code="cpt|72148",
        region="lumbar",
        contrast="without",
        verdict=verdict,
        variant="LBP-V1",
        rating="not-appropriate",
        red_flags=[],
        unread_sources=[],
        suggestion_kinds={f"{card}-cancel": "cancel"},
        latency_ms=5.0,
        mappings_version="v1",
        consult_id=f"urn:uuid:{card}",
        mode="live",
    )
    return replace(base, **changes)


@pytest.fixture
def store(database_url, tmp_path):
    opened = Store(database_url, spool_dir=tmp_path / "spool")
    yield opened
    opened.close()


def test_migrations_build_the_schema_the_code_uses(store):
    inspector = sa.inspect(store.engine)
    for table in metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == {c.name for c in table.columns}, table.name
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("seen_tokens")}
    assert ("expires_at",) in indexed  # pruning expired token ids never scans the table


def test_a_token_id_is_accepted_once_across_instances(store, database_url, tmp_path):
    other = Store(database_url, spool_dir=tmp_path / "other")  # a second instance on the same database
    try:
        expires = time.time() + 300
        assert store.first_use_of_token("https://ehr", "jti-1", expires)
        assert not other.first_use_of_token("https://ehr", "jti-1", expires)
        assert other.first_use_of_token("https://ehr", "jti-2", expires)
        long_a, long_b = "x" * 600 + "a", "x" * 600 + "b"  # long ids are digested, never cut into a collision
        assert store.first_use_of_token("https://ehr", long_a, expires)
        assert store.first_use_of_token("https://ehr", long_b, expires)
    finally:
        other.close()


def test_expired_token_ids_are_pruned(store):
    store.first_use_of_token("https://ehr", "old", time.time() - 3600)
    store._pruned_at = 0
    store.first_use_of_token("https://ehr", "new", time.time() + 300)
    with store.engine.connect() as connection:
        jtis = {row.jti for row in connection.execute(sa.text("SELECT jti FROM seen_tokens"))}
    assert jtis == {"new"}


def test_refired_and_signed_orders_count_once_with_the_latest_verdict(store):
    start = utcnow()
    store.record([record("c1", when=start)])
    store.record([record("c2", when=start + timedelta(seconds=5))])  # order-select fired again
    store.record([record("c3", verdict="indicated-routine", hook="order-sign", when=start + timedelta(seconds=9))])
    store.record([record("c4", order="ServiceRequest/mri-2", when=start + timedelta(seconds=9))])
    assert store.writer.flush()
    report = build_report(store.engine, Window.last_days(1))
    assert report["orders"] == 2 and report["hook_calls"] == 4
    assert report["verdicts"] == {"indicated-routine": 1, "low-value": 1}


def test_the_raw_patient_id_is_never_stored(store):
    store.record([record("c1")])
    store.writer.flush()
    with store.engine.connect() as connection:
        dumped = json.dumps(
            [
                list(map(str, row))
                for table in ("evaluations", "orders")
                for row in connection.execute(sa.text(f"SELECT * FROM {table}"))
            ]
        )
    assert "patient-raw-id-123" not in dumped
    assert store.patient_hash("patient-raw-id-123") in dumped


REASONS = {
    "surgical-candidate": "Surgical or interventional candidate (planning)",
    "other": "Other reason (say which in the comment)",
}


def test_feedback_joins_its_card_classifies_the_suggestion_and_stores_the_cards_display(store):
    store.record([record("c1", override_reasons=REASONS)])  # still spooled: feedback finds it there
    stored = store.record_feedback(
        "spine-mri-order-select",
        {
            "feedback": [
                {
                    "card": "c1",
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": "c1-cancel"}],
                    "outcomeTimestamp": "2026-11-22T10:00:00Z",
                }
            ]
        },
    )
    assert stored == 1
    store.record([record("c2", order="ServiceRequest/mri-2", override_reasons=REASONS)])
    override = {
        "card": "c2",
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-22T10:01:00Z",
        # a client's own display is not stored: the card's is
        "overrideReason": {"reason": {"code": "surgical-candidate", "display": "=HYPERLINK(1)"}, "userComment": "ok"},
    }
    assert store.record_feedback("spine-mri-order-select", {"feedback": [override]}) == 1
    assert store.record_feedback("spine-mri-order-select", {"feedback": [override]}) == 0  # a retry
    with store.engine.connect() as connection:
        rows = {r.card_uuid: r for r in connection.execute(sa.select(feedback))}
    assert json.loads(rows["c1"].accepted_kinds) == ["cancel"]
    assert rows["c2"].override_display == "Surgical or interventional candidate (planning)"
    assert rows["c2"].user_comment == "ok" and "userComment" not in rows["c2"].raw  # the comment, once
    store.writer.flush()
    advice = build_report(store.engine, Window.last_days(1))["advice"]
    assert (advice["taken"], advice["overridden"]) == (1, 1)
    assert advice["accepted_by_kind"] == {"cancel": 1}
    assert advice["override_reasons"][0]["code"] == "surgical-candidate"


def overridden(card: str, code: str | None, **reason) -> dict:
    item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:01:00Z"}
    if code is not None or reason:
        item["overrideReason"] = {"reason": {"code": code, **reason} if code else reason}
    return {"feedback": [item]}


def test_feedback_accepts_only_the_reasons_the_card_offered(store):
    store.record([record("c1", override_reasons=REASONS)])
    with pytest.raises(FeedbackError) as refused:
        store.record_feedback("spine-mri-order-select", overridden("c1", "made-up-reason"))
    message = str(refused.value)
    assert "made-up-reason" in message and "other, surgical-candidate" in message  # names the allowed codes
    assert store.record_feedback("spine-mri-order-select", overridden("c1", "other")) == 1
    assert store.record_feedback("spine-mri-order-select", overridden("c1", None)) == 1  # no reason given: fine
    # a card that offered none refuses any code
    store.record([record("c2", order="ServiceRequest/mri-2", override_reasons={})])
    with pytest.raises(FeedbackError, match="offered no override reasons"):
        store.record_feedback("spine-mri-order-select", overridden("c2", "other"))


def test_feedback_on_a_card_written_before_reasons_were_kept_takes_any_code(store):
    store.record([record("old", override_reasons=None)])  # as rows written before migration 0002
    assert store.record_feedback("spine-mri-order-select", overridden("old", "anything", display="Theirs")) == 1
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(feedback.c.override_display)).scalar() == "Theirs"


def test_feedback_for_a_card_never_issued_is_refused_after_one_look(store, monkeypatch):
    """Never waits for the card (it once held a request thread 2 s): the database, the spool, the database."""
    import cds_service.utilization.store as store_module

    monkeypatch.setattr(store_module.time, "sleep", lambda _s: pytest.fail("feedback slept"))
    statements = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with pytest.raises(FeedbackError, match="was issued by this service"):
        store.record_feedback(
            "spine-mri-order-select",
            {"feedback": [{"card": "never-issued", "outcome": "accepted", "outcomeTimestamp": "2026-11-22T10:00:00Z"}]},
        )
    assert len([s for s in statements if "evaluations" in s]) == 2


@pytest.mark.parametrize(
    "comment,problem",
    [(r"bad \ud800 text", "lone surrogate"), (r"nul \u0000 here", "NUL")],
)
def test_feedback_with_text_no_database_stores_is_400_naming_the_field(client, comment, problem):
    card = client.post(SELECT, json=fixtures.hook_request("lbp-osteoporosis")).get_json()["cards"][0]
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "overrideReason": {"userComment": "COMMENT"},
    }
    raw = json.dumps({"feedback": [item]}).replace("COMMENT", comment)
    reply = client.post(SELECT + "/feedback", data=raw, content_type="application/json")
    assert reply.status_code == 400, reply.get_data(as_text=True)
    assert problem in reply.get_json()["error"] and "userComment" in reply.get_json()["error"]


def test_a_huge_comment_is_cut_and_stored_once(app_for, settings):
    from cds_service.utilization.store import MAX_COMMENT_CHARS

    client = app_for(max_body_bytes=32 * 1024 * 1024)  # the default CDS_MAX_BODY_BYTES
    card = client.post(SELECT, json=fixtures.hook_request("lbp-osteoporosis")).get_json()["cards"][0]
    comment = "x" * (30 * 1000 * 1000)
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "overrideReason": {"userComment": comment},
    }
    before = settings.feedback_db.stat().st_size
    reply = client.post(SELECT + "/feedback", json={"feedback": [item]})
    assert reply.status_code == 200 and reply.get_json() == {"stored": 1}
    with sa.create_engine(f"sqlite:///{settings.feedback_db}").connect() as connection:
        stored = connection.execute(sa.select(feedback.c.user_comment, feedback.c.raw)).one()
    assert stored.user_comment.startswith("x" * MAX_COMMENT_CHARS) and "cut" in stored.user_comment
    assert len(stored.user_comment) < MAX_COMMENT_CHARS + 100 and "xxxx" not in stored.raw
    wal = settings.feedback_db.with_name(settings.feedback_db.name + "-wal")
    grown = settings.feedback_db.stat().st_size + (wal.stat().st_size if wal.exists() else 0) - before
    assert grown < 1024 * 1024  # was 126 MB


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"card": "u" * 200}, "card"),
        ({"outcomeTimestamp": "t" * 65}, "outcomeTimestamp"),
        ({"acceptedSuggestions": [{"id": "s"}] * 21}, "acceptedSuggestions"),
        ({"overrideReason": {"reason": {"code": "c" * 129}}}, "code"),
        ({"extension": {"x": "y" * 20_000}}, "16 KiB"),
    ],
)
def test_oversized_feedback_fields_are_refused(store, change, needle):
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z", **change}
    with pytest.raises(FeedbackError, match=needle):
        store.record_feedback("spine-mri-order-select", {"feedback": [item]})


def test_feedback_finds_a_card_another_worker_has_only_spooled(database_url, tmp_path):
    """Two processes of one instance share the spool directory: a card answered by one and not yet
    written (its writer has not run) is found by the other from the spool file."""
    spool = tmp_path / "spool"
    answering, other = Store(database_url, spool_dir=spool), Store(database_url, spool_dir=spool)
    try:
        answering.writer._ensure_thread = lambda: None  # this worker's writer has not run yet
        answering.record([record("c-spooled", override_reasons=REASONS)])
        item = {
            "card": "c-spooled",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "c-spooled-cancel"}],
            "outcomeTimestamp": "2026-11-22T10:00:00Z",
        }
        assert other.record_feedback("spine-mri-order-select", {"feedback": [item]}) == 1
        with other.engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(evaluations)).scalar() == 0
            kinds = connection.execute(sa.select(feedback.c.accepted_kinds)).scalar()
        assert json.loads(kinds) == ["cancel"]
    finally:
        answering.close()
        other.close()


def test_card_shown_for_answers_from_this_process_the_database_and_never_raises(database_url, tmp_path):
    first = Store(database_url, spool_dir=tmp_path / "a")
    second = Store(database_url, spool_dir=tmp_path / "b")  # another instance
    try:
        first.record([record("c1", fingerprint="fp-live")])
        first.record([record("c2", order="ServiceRequest/2", fingerprint="fp-shadow", mode="shadow")])
        first.record([record("c3", order="ServiceRequest/3", fingerprint="fp-sign", hook="order-sign")])
        old = utcnow() - timedelta(hours=25)
        first.record([record("c4", order="ServiceRequest/4", fingerprint="fp-old", when=old)])
        assert first.card_shown_for("fp-live") is True  # this process, before the writer ran
        assert first.writer.flush()
        assert second.card_shown_for("fp-live") is True  # the database
        for fingerprint in ("fp-shadow", "fp-sign", "fp-old", "never", ""):
            assert second.card_shown_for(fingerprint) is False, fingerprint
    finally:
        first.close()
        second.close()


def test_the_report_counts_clinicians_weeks_latency_and_completeness(store):
    today = utcnow()
    rows = []
    for index in range(6):
        rows.append(
            record(
                f"a{index}",
                order=f"ServiceRequest/a{index}",
                user="Practitioner/a",
                when=today - timedelta(days=index),
                latency_ms=float(index + 1),
            )
        )
    rows.append(
        record(
            "b0",
            order="ServiceRequest/b0",
            user="Practitioner/b",
            verdict="indicated-urgent",
            unread_sources=["medications"],
            when=today,
        )
    )
    rows.append(record("old", order="ServiceRequest/old", when=today - timedelta(days=60)))  # outside the window
    store.record(rows)
    store.writer.flush()
    report = build_report(store.engine, Window.last_days(30), options=Options(min_orders=1))
    assert report["orders"] == 7
    assert report["low_value_rate"] == round(6 / 7, 4)
    first = report["clinicians"][0]
    assert [first[k] for k in ("user", "orders", "low_value", "low_value_rate")] == ["Practitioner/a", 6, 6, 1.0]
    assert report["completeness"] == {
        "orders_with_unread_sources": 1,
        "share": round(1 / 7, 4),
        "unread_by_source": {"medications": 1},
    }
    assert report["latency_ms"]["p50"] == 4.0 and report["latency_ms"]["hook_calls"] == 7
    assert sum(week["orders"] for week in report["weekly"]) == 7
    text = render_text(report)
    assert "Practitioner/a" in text and "85.7%" in text
    csv_lines = render_csv(report).splitlines()
    assert "clinicians,Practitioner/a,low_value,6" in csv_lines
    assert json.loads(render_json(report))["orders"] == 7


def test_the_html_report_is_one_offline_file_with_charts(store):
    store.record([record("c1")])
    store.writer.flush()
    page = render_html(build_report(store.engine, Window.last_days(7)))
    from html.parser import HTMLParser

    class ExternalResources(HTMLParser):
        found: ClassVar[list] = []

        def handle_starttag(self, tag, attrs):
            attributes = dict(attrs)
            source = attributes.get("src") or (attributes.get("href") if tag == "link" else None)
            if source and not source.startswith("data:"):
                self.found.append((tag, attributes))

    parser = ExternalResources()
    parser.feed(page)
    assert parser.found == []  # nothing loaded from elsewhere: readable offline
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inline


def test_bad_database_urls_and_unreachable_servers_are_one_line(tmp_path):
    from cds_service.utilization.store import StoreError

    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        Store("mysql://x@localhost/db")
    with pytest.raises(StoreError, match="cannot use the database") as raised:
        Store("postgresql+psycopg://user:secret@127.0.0.1:1/none")
    assert "secret" not in str(raised.value)


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
def app_for(tmp_path, settings):
    from cds_service.web.app import create_app

    def make(**changes):
        return create_app(replace(settings, **changes)).test_client()

    return make


def test_shadow_mode_records_but_shows_no_card(app_for, settings):
    client = app_for(mode="shadow")
    assert client.get("/healthz").get_json()["mode"] == "shadow"
    reply = client.post(SELECT, json=fixtures.hook_request("lbp-acute-simple"))
    assert reply.get_json() == {"cards": []}
    engine = sa.create_engine(f"sqlite:///{settings.feedback_db}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(evaluations.c.verdict, evaluations.c.mode)).all()
        if rows:
            break
        time.sleep(0.05)
    assert [tuple(r) for r in rows] == [("low-value", "shadow")]


def test_recording_off_writes_no_evaluation(app_for, settings):
    client = app_for(record_evaluations=False)
    assert client.get("/healthz").get_json()["recording"] == "off"
    assert client.post(SELECT, json=fixtures.hook_request("lbp-acute-simple")).status_code == 200
    time.sleep(0.5)
    with sa.create_engine(f"sqlite:///{settings.feedback_db}").connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(evaluations)).scalar() == 0


@pytest.mark.parametrize(
    "item,needle",
    [
        ({"card": 5, "outcome": "accepted", "outcomeTimestamp": "t"}, "card"),
        ({"card": "c", "outcome": "accepted", "outcomeTimestamp": 7}, "outcomeTimestamp"),
        (
            {"card": "c", "outcome": "accepted", "outcomeTimestamp": "t", "acceptedSuggestions": "x"},
            "acceptedSuggestions",
        ),
        (
            {"card": "c", "outcome": "accepted", "outcomeTimestamp": "t", "acceptedSuggestions": [{"id": 1}]},
            "acceptedSuggestions",
        ),
        ({"card": "c", "outcome": "overridden", "outcomeTimestamp": "t", "overrideReason": []}, "overrideReason"),
        (
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "t", "overrideReason": {"reason": {"code": 3}}},
            "reason",
        ),
        (
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "t", "overrideReason": {"userComment": {}}},
            "userComment",
        ),
    ],
)
def test_wrong_types_in_feedback_are_400_naming_the_field(client, item, needle):
    reply = client.post(SELECT + "/feedback", json={"feedback": [item]})
    assert reply.status_code == 400 and needle in reply.get_json()["error"]


def test_the_dashboard_is_off_by_default_and_needs_its_credential(app_for):
    assert app_for().get("/dashboard").status_code == 404
    client = app_for(dashboard_token="s3cret-dash")
    refused = client.get("/dashboard")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = client.get("/dashboard", headers={"Authorization": "Bearer s3cret-dash"})
    assert page.status_code == 200 and "<h1>Spine MRI orders</h1>" in page.get_data(as_text=True)
    basic = client.get("/dashboard", auth=("analyst", "s3cret-dash"))
    assert basic.status_code == 200
    assert "/dashboard/plotly.min.js" in basic.get_data(as_text=True)
    assert client.get("/dashboard/plotly.min.js").status_code == 401  # the script is behind the credential too
    assert client.get("/dashboard/plotly.min.js", auth=("analyst", "s3cret-dash")).status_code == 200
    for path in ("/dashboard/orders.csv", "/dashboard/report.csv"):
        assert client.get(path).status_code == 401
        assert client.get(path, auth=("analyst", "s3cret-dash")).status_code == 200


def test_the_dashboard_forbids_framing_and_foreign_scripts(app_for):
    client = app_for(dashboard_token="s3cret-dash")
    for reply in (client.get("/dashboard"), client.get("/dashboard", auth=("a", "s3cret-dash"))):
        policy = reply.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert reply.headers["X-Frame-Options"] == "DENY" and reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Cache-Control"] == "no-store"
    page = client.get("/dashboard", auth=("a", "s3cret-dash"))
    nonce = page.headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    scripts = page.get_data(as_text=True).count("<script")
    executed = scripts - page.get_data(as_text=True).count('<script type="application/json"')
    assert page.get_data(as_text=True).count(f'nonce="{nonce}"') == executed == 2  # plotly.js and the page's own
    other = client.get("/dashboard", auth=("a", "s3cret-dash")).headers["Content-Security-Policy"]
    assert nonce not in other  # a new nonce per page


def test_repeated_wrong_dashboard_credentials_are_slowed_down(app_for):
    from cds_service.web.dashboard import FREE_FAILURES

    client = app_for(dashboard_token="s3cret-dash")
    for _ in range(FREE_FAILURES - 1):
        assert client.get("/dashboard", auth=("a", "guess")).status_code == 401
    assert client.get("/dashboard", auth=("a", "guess")).status_code == 401
    slowed = client.get("/dashboard", auth=("a", "s3cret-dash"))  # even the right one waits now
    assert slowed.status_code == 429 and int(slowed.headers["Retry-After"]) >= 1
    elsewhere = client.get("/dashboard", auth=("a", "s3cret-dash"), environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert elsewhere.status_code == 200  # another address is not held back


def test_the_dashboard_filters_and_exports(app_for, settings):
    client = app_for(dashboard_token="pw")
    store = Store(f"sqlite:///{settings.feedback_db}")
    try:
        store.write_evaluations(
            [
                record("c1", user="=cmd|' /C calc'!A0", region="lumbar"),
                record("c2", order="ServiceRequest/2", user="Practitioner/b", region="cervical", mode="shadow"),
            ]
        )
    finally:
        store.close()
    auth = ("a", "pw")
    both = client.get("/dashboard/orders.csv", auth=auth)
    assert both.status_code == 200 and both.mimetype == "text/csv"
    assert "attachment" in both.headers["Content-Disposition"]
    lines = both.get_data(as_text=True).splitlines()
    assert len(lines) == 3 and lines[0].startswith("order,first_card_at")
    assert "\"'=cmd|' /C calc'!A0\"" in lines[1] or "'=cmd|' /C calc'!A0" in lines[1]
    only_cervical = client.get("/dashboard/orders.csv?region=cervical&mode=shadow", auth=auth).get_data(as_text=True)
    assert len(only_cervical.splitlines()) == 2 and "Practitioner/b" in only_cervical
    page = client.get("/dashboard?region=cervical", auth=auth).get_data(as_text=True)
    assert '<option value="cervical" selected>' in page and "only region cervical" in page
    assert "orders.csv?since=" in page and "region=cervical" in page  # the export keeps the filters
    assert client.get("/dashboard?since=yesterday", auth=auth).status_code == 400
    assert client.get("/dashboard?since=2026-02-01&until=2026-01-01", auth=auth).status_code == 400
    assert client.get("/dashboard?mode=sideways", auth=auth).status_code == 400


def test_a_database_written_before_migrations_keeps_its_rows(tmp_path):
    """CDS_FEEDBACK_DB files from before the migrations (the old three tables) are upgraded in place."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE evaluations (card_uuid TEXT PRIMARY KEY, consult_id TEXT NOT NULL, service_id TEXT NOT NULL,
                hook_instance TEXT NOT NULL, patient_id TEXT, order_reference TEXT NOT NULL, region TEXT, contrast TEXT,
                verdict TEXT NOT NULL, variant TEXT, rating TEXT, evaluated_at TEXT NOT NULL);
            CREATE TABLE seen_tokens (iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at REAL NOT NULL,
                PRIMARY KEY (iss, jti));
            CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, service_id TEXT NOT NULL,
                card_uuid TEXT NOT NULL, outcome TEXT NOT NULL, override_code TEXT, override_display TEXT,
                user_comment TEXT,
                accepted_suggestions TEXT NOT NULL, outcome_timestamp TEXT NOT NULL, received_at TEXT NOT NULL,
                raw TEXT NOT NULL);
        """)
        now = utcnow().isoformat() + "+00:00"
        for card in ("old-1", "old-2"):
            old.execute(
                "INSERT INTO evaluations VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    card,
                    "urn:uuid:x",
                    "spine-mri-order-select",
                    f"hi-{card}",
                    "raw-patient",
                    "ServiceRequest/o",
                    "lumbar",
                    "without",
                    "low-value",
                    "LBP-V1",
                    "not-appropriate",
                    now,
                ),
            )
        old.execute(
            "INSERT INTO feedback (service_id, card_uuid, outcome, override_code, override_display, "
            "user_comment, accepted_suggestions, outcome_timestamp, received_at, raw) VALUES "
            "(?,?,?,?,?,?,?,?,?,?)",
            (
                "spine-mri-order-select",
                "old-2",
                "overridden",
                "surgical-candidate",
                None,
                None,
                "[]",
                "2026-11-22T10:00:00Z",
                now,
                "{}",
            ),
        )
    store = Store(f"sqlite:///{path}")
    try:
        report = build_report(store.engine, Window.last_days(2))
        assert report["orders"] == 1 and report["hook_calls"] == 2  # one order, fired twice
        with store.engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(feedback)).scalar() == 1
            dumped = str(connection.execute(sa.select(evaluations)).all())
        assert "raw-patient" not in dumped
    finally:
        store.close()


def test_a_row_the_database_refuses_does_not_take_its_batch_or_the_writer_with_it(store):
    good = [record(f"ok{i}", order=f"ServiceRequest/ok{i}") for i in range(3)]
    bad = record("bad", order="ServiceRequest/bad", evaluated_at=None)  # NOT NULL: refused
    store.record([*good[:2], bad, *good[2:]])
    assert store.writer.flush(timeout=10)
    store.record([record("later", order="ServiceRequest/later")])  # the writer still runs
    assert store.writer.flush(timeout=10)
    with store.engine.connect() as connection:
        cards = {row.card_uuid for row in connection.execute(sa.select(evaluations.c.card_uuid))}
    assert cards == {"ok0", "ok1", "ok2", "later"}


def test_text_no_database_stores_never_costs_an_evaluation(store):
    """A lone surrogate or NUL from the request (userId, order id, hookInstance) is replaced, not
    refused: the row is written, and the spool line could hold it."""
    odd = "x\ud800y\x00z"
    store.record([record("odd", user=odd, order="ServiceRequest/" + odd, hook_instance=odd, order_code=odd, site=odd)])
    assert store.writer.flush(timeout=30)
    with store.engine.connect() as connection:
        row = connection.execute(sa.select(evaluations).where(evaluations.c.card_uuid == "odd")).one()
    assert row.user_id == "x?y\ufffdz" and row.hook_instance == "x?y\ufffdz" and row.site == "x?y\ufffdz"


def test_card_shown_for_finds_another_workers_card_still_in_the_spool(database_url, tmp_path):
    spool = tmp_path / "spool"
    answering, asking = Store(database_url, spool_dir=spool), Store(database_url, spool_dir=spool)
    try:
        answering.writer._ensure_thread = lambda: None  # its writer has not run yet
        answering.record([record("c1", fingerprint="fp-1")])
        answering.record([record("c2", order="ServiceRequest/2", fingerprint="fp-2", mode="shadow")])
        assert asking.card_shown_for("fp-1") is True
        assert asking.card_shown_for("fp-2") is False
    finally:
        answering.close()
        asking.close()


def test_the_gate_trips_on_a_missed_deadline_but_not_for_slow_work_and_a_probe_reopens_it():
    import threading

    from cds_service.utilization.gate import DatabaseGate, DatabaseUnavailable

    gate = DatabaseGate(timeout=0.2, describe_database="test")
    held = threading.Event()
    with pytest.raises(DatabaseUnavailable):
        gate.call(lambda: held.wait(30), slow_ok=True)  # a long report: the gate stays shut
    assert not gate.down
    with pytest.raises(DatabaseUnavailable):
        gate.call(lambda: held.wait(30))  # a request's call that misses its deadline
    assert gate.down
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        gate.call(lambda: 1)  # fails at once while down
    held.set()
    gate._next_probe = 0.0
    assert gate.probe(lambda: 1) and not gate.down
    assert gate.call(lambda: 2) == 2
