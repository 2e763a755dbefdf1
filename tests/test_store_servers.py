"""The store with real server processes: SIGTERM loses nothing, two instances share one PostgreSQL,
the report command never writes to a file that is not its database, and the dashboard draws charts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from cds_service.cli import fixtures
from cds_service.cli.main import main
from cds_service.cli.processes import free_port, serve_command, wait_for_http
from cds_service.utilization.store import evaluations
from cds_service.web.auth import generate_key_pair, sign_token

ROOT = Path(__file__).resolve().parent.parent
SELECT = "/cds-services/spine-mri-order-select"


class Serve:
    """`cds-service serve` in its own process."""

    def __init__(self, env: dict, tmp_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        full.update(CDS_LOG_LEVEL="WARNING", **env)
        self.log = (tmp_path / f"serve-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            serve_command(self.port, 2, 4),
            cwd=ROOT,
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if not wait_for_http(self.base + "/healthz", self.process, seconds=60):
            self.stop()
            pytest.fail("the service did not start: " + Path(self.log.name).read_text()[-2000:])

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        return self.process.returncode


def count(url: str, table=evaluations) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_sigterm_loses_no_evaluation(tmp_path):
    db = tmp_path / "cds.sqlite3"
    server = Serve({"CDS_ALLOW_UNAUTHENTICATED": "1", "CDS_FEEDBACK_DB": str(db)}, tmp_path)
    body = fixtures.hook_request("lbp-acute-simple")
    sent = 60
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(lambda _: requests.post(server.base + SELECT, json=body, timeout=30).status_code, range(sent))
            )
        assert statuses == [200] * sent
    finally:
        # at once: rows still in the writers' queues must be written on the way out
        assert server.stop(signal.SIGTERM) == 0
    assert count(f"sqlite:///{db}") == sent


def test_two_instances_share_replay_protection_and_count_feedback_once(tmp_path, postgres):
    url = postgres.create_database("two_instances")
    pem, jwk = generate_key_pair("ehr-1")
    trust = tmp_path / "trusted.json"
    trust.write_text(json.dumps({"https://ehr.example.org": {"jwks": {"keys": [jwk]}}}))
    public = "https://cds.example.org"  # both behind one load balancer
    env = {"CDS_TRUSTED_ISSUERS": str(trust), "CDS_DATABASE_URL": url, "CDS_PUBLIC_BASE_URL": public}
    first = Serve({**env, "CDS_SPOOL_DIR": str(tmp_path / "spool-1")}, tmp_path)  # two hosts: two spools
    second = Serve({**env, "CDS_SPOOL_DIR": str(tmp_path / "spool-2")}, tmp_path)
    try:

        def post(server, path, body, token):
            return requests.post(
                server.base + path, json=body, timeout=30, headers={"Authorization": f"Bearer {token}"}
            )

        token = sign_token("https://ehr.example.org", pem, public + SELECT, "ehr-1")
        reply = post(first, SELECT, fixtures.hook_request("lbp-osteoporosis"), token)
        assert reply.status_code == 200
        replayed = post(second, SELECT, fixtures.hook_request("lbp-osteoporosis"), token)
        assert replayed.status_code == 401 and "already used" in replayed.json()["error"]

        card = reply.json()["cards"][0]
        # Another instance knows a card once the first has written it (within its batch interval);
        # a clinician's click comes seconds after the card.
        written = sa.select(sa.func.count()).select_from(evaluations).where(evaluations.c.card_uuid == card["uuid"])
        engine = sa.create_engine(url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                if connection.execute(written).scalar():
                    break
            time.sleep(0.1)
        engine.dispose()
        item = {
            "card": card["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": "2026-11-22T10:00:00Z",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        }
        for server in (second, first):  # the client retries on the other instance
            feedback_url = public + SELECT + "/feedback"
            answer = post(
                server,
                SELECT + "/feedback",
                {"feedback": [item]},
                sign_token("https://ehr.example.org", pem, feedback_url, "ehr-1"),
            )
            assert answer.status_code == 200, answer.text
    finally:
        first.stop()
        second.stop()
    environment = {**os.environ, "CDS_DATABASE_URL": url}
    run = subprocess.run(
        [sys.executable, "-m", "cds_service", "report", "--format", "json"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["orders"] == 1
    assert report["advice"]["taken"] == 1 and sum(report["advice"]["accepted_by_kind"].values()) == 1


def test_report_refuses_a_file_that_is_not_its_database_and_never_writes_to_it(tmp_path, capsys):
    import sqlite3

    for name, make in (
        ("notes.txt", lambda p: p.write_text("not a database")),
        ("other.sqlite3", lambda p: sqlite3.connect(p).execute("CREATE TABLE x (y)").connection.commit()),
    ):
        path = tmp_path / name
        make(path)
        before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        assert main(["report", "--db", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err
        assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name)) == [name]  # no -wal, no -journal
    assert main(["report", "--db", str(tmp_path / "missing.sqlite3")]) == 1
    assert "no database" in capsys.readouterr().err


LINK_SHAPED = '<a href="https://evil.example/">Dr Link</a>'


def test_dashboard_in_a_real_browser_shows_its_charts_and_no_label_is_a_link(tmp_path):
    from datetime import timedelta

    from screenshots import look

    from cds_service.cli.demo_history import fill_demo_history
    from cds_service.clinical.mappings import get_mappings
    from cds_service.utilization.store import OrderRecord, Store, utcnow

    db = tmp_path / "cds.sqlite3"
    store = Store(f"sqlite:///{db}")
    fill_demo_history(store, get_mappings(), weeks=4, orders_per_week=40)
    # a clinician id shaped like an HTML link, with enough orders to be charted
    store.write_evaluations(
        [
            OrderRecord(
                card_uuid=f"link-{i}",
                evaluated_at=utcnow() - timedelta(days=i % 20),
                service_id="spine-mri-order-select",
                hook="order-select",
                hook_instance=f"hi-link-{i}",
                user_id=LINK_SHAPED,
                patient_id=f"p{i}",
                encounter_id=None,
                order_reference=f"ServiceRequest/link-{i}",
                order_code="cpt|72148",
                region="lumbar",
                contrast="without",
                verdict="low-value",
                variant=None,
                rating=None,
                red_flags=[],
                unread_sources=[],
                suggestion_kinds={},
                latency_ms=5.0,
                mappings_version="v",
                consult_id="",
                mode="live",
                site='=HYPERLINK("https://evil.example")',
            )
            for i in range(30)
        ]
    )
    store.close()
    server = Serve(
        {"CDS_ALLOW_UNAUTHENTICATED": "1", "CDS_FEEDBACK_DB": str(db), "CDS_DASHBOARD_TOKEN": "dash-pw"}, tmp_path
    )
    shot = tmp_path / "dashboard.png"
    try:
        seen = look(server.base + "/dashboard", shot, ("analyst", "dash-pw"))
        filtered = look(server.base + "/dashboard?region=cervical&mode=live", None, ("analyst", "dash-pw"))
    finally:
        server.stop()
    assert seen.status == 200 and seen.errors == []  # no script error, no Content-Security-Policy refusal
    assert seen.charts == 9 and seen.bars > 20 and seen.fits == [True] * 9
    assert seen.links_in_charts == 0 and "Dr Link" in seen.chart_texts and "<a href" in seen.chart_texts
    assert filtered.status == 200 and filtered.errors == [] and filtered.charts == 9
    # the charts are drawn: the chart area of the screenshot is far from one flat colour
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    region = image.crop((0, 300, image.width, min(image.height, 1200)))
    colours = region.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200


def test_the_offline_html_report_draws_in_a_browser(tmp_path):
    from screenshots import look

    from cds_service.cli.demo_history import fill_demo_history
    from cds_service.clinical.mappings import get_mappings
    from cds_service.utilization.store import Store

    db = tmp_path / "cds.sqlite3"
    store = Store(f"sqlite:///{db}")
    fill_demo_history(store, get_mappings(), weeks=2, orders_per_week=30)
    store.close()
    report = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--format", "html", "--out", str(report)]) == 0
    seen = look(report.as_uri(), tmp_path / "report.png")
    assert seen.errors == [] and seen.charts == 9 and seen.bars > 10


def test_a_browser_page_on_another_origin_can_call_the_service(live_server):
    """What the CDS Hooks sandbox does from its own origin: discovery, then a POST with a bearer token
    and a JSON body, which makes the browser send a CORS preflight first."""
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{page_server.server_address[1]}"
    script = """async ([base, body]) => {
        const services = await (await fetch(base + "/cds-services")).json();
        const reply = await fetch(base + "/cds-services/spine-mri-order-select", {method: "POST",
            headers: {"Authorization": "Bearer x.y.z", "Content-Type": "application/json"}, body: body});
        return {services: services.services.length, status: reply.status, cards: (await reply.json()).cards.length};
    }"""
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            page = browser.new_page()
            page.goto(origin + "/")
            result = page.evaluate(script, [live_server["base"], json.dumps(fixtures.hook_request("lbp-osteoporosis"))])
            browser.close()
    finally:
        page_server.shutdown()
    assert result == {"services": 2, "status": 200, "cards": 1}


UNKNOWN_CARD_LOAD = """
import json, os, sys, threading, requests
url, stop_file = sys.argv[1], sys.argv[2]
item = {"card": "never-issued", "outcome": "accepted", "outcomeTimestamp": "2026-11-22T10:00:00Z"}
counts = {}
def run():
    session = requests.Session()
    while not os.path.exists(stop_file):
        status = session.post(url, json={"feedback": [item]}, timeout=60).status_code
        counts[status] = counts.get(status, 0) + 1
threads = [threading.Thread(target=run) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(counts))
"""


def test_feedback_for_unknown_cards_does_not_hold_the_hooks_threads(tmp_path):
    """16 clients posting feedback for a card nobody issued once pushed hook latency from 20 ms to
    6 s (each held a thread 2 s). Judged against a baseline measured in this test: hook latency
    under that load stays within a small multiple of the latency without it, or under a second,
    whichever is larger (a busy CI machine alone can multiply a 2 ms hook)."""
    import statistics

    db = tmp_path / "cds.sqlite3"
    server = Serve({"CDS_ALLOW_UNAUTHENTICATED": "1", "CDS_FEEDBACK_DB": str(db)}, tmp_path)
    body = fixtures.hook_request("lbp-osteoporosis")
    session = requests.Session()

    def hook_ms(count: int) -> float:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            assert session.post(server.base + SELECT, json=body, timeout=60).status_code == 200
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    stop_file = tmp_path / "stop"
    try:
        hook_ms(10)  # warm up
        baseline = hook_ms(40)
        load = subprocess.Popen(
            [sys.executable, "-c", UNKNOWN_CARD_LOAD, server.base + SELECT + "/feedback", str(stop_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1)
            loaded = hook_ms(40)
        finally:
            stop_file.write_text("stop")
            counts = load.communicate(timeout=120)[0]
    finally:
        server.stop()
    refused = json.loads(counts)  # {status: count} printed by the load script
    assert set(refused) == {"400"} and refused["400"] > 100, refused
    print(f"\nhook p50: {baseline:.1f} ms alone, {loaded:.1f} ms beside 16 unknown-card feedback clients")
    # The failure was seconds (each unknown card held a thread 2 s); a loaded 2-core machine adds
    # tens of milliseconds on its own. A floor far from the failure and far above the noise:
    assert loaded < max(baseline * 8, 1000), (baseline, loaded)
