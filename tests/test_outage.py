"""The record survives its database: a real PostgreSQL, started by the suite for these tests alone,
stopped and frozen (SIGSTOP) under the store and under the running service, and the service
restarted while the database is down. What was answered is counted against what is stored.

No assertion here depends on a wall-clock margin: "did not wait for the database" is shown by the
call returning while the database is still frozen (it is thawed only afterwards), and "stored"
by polling the database until the rows are there or a generous deadline passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from postgres import LocalPostgres

from cds_service.cli import fixtures
from cds_service.utilization.store import (
    DatabaseUnavailable,
    OrderRecord,
    Store,
    StoreError,
    evaluations,
    orders,
    seen_tokens,
    utcnow,
)

SELECT = "/cds-services/spine-mri-order-select"
SERVE = ["-m", "cds_service", "serve"]


class OutagePostgres(LocalPostgres):
    """LocalPostgres that can also be stopped and started again on its data, frozen and thawed."""

    def start(self) -> str:
        url = super().start()
        self._options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        return url

    def stop_server(self) -> None:
        self.thaw()
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def start_server(self) -> None:
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "start", "-o", self._options)

    def _pids(self) -> list[int]:
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == master:
                    children.append(int(entry.name))
        return [master, *children]

    def freeze(self) -> None:
        self._frozen = self._pids()
        for pid in self._frozen:  # the postmaster first: it starts no new backend while stopped
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in getattr(self, "_frozen", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def stop(self) -> None:
        self.thaw()
        super().stop()


@pytest.fixture(scope="module")
def pg():
    server = OutagePostgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def url(pg, request):
    name = "o_" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    url = pg.create_database(name)
    yield url
    if not (pg.data / "postmaster.pid").exists():
        pg.start_server()
    pg.thaw()


def record(card: str, **changes) -> OrderRecord:
    base = dict(
        card_uuid=card,
        evaluated_at=utcnow(),
        service_id="spine-mri-order-select",
        hook="order-select",
        hook_instance=f"hi-{card}",
        user_id="Practitioner/a",
        patient_id="patient-1",
        encounter_id="enc-1",
        order_reference=f"ServiceRequest/{card}",
        order_code="cpt|72148",
        region="lumbar",
        contrast="without",
        verdict="low-value",
        variant=None,
        rating=None,
        red_flags=[],
        unread_sources=[],
        suggestion_kinds={f"{card}-s": "cancel"},
        latency_ms=3.0,
        mappings_version="v",
        consult_id="",
        mode="live",
        fingerprint=f"fp-{card}",
        override_reasons={"other": "Other"},
    )
    base.update(changes)
    return OrderRecord(**base)  # type: ignore[arg-type]


def cards_in(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sa.select(evaluations.c.card_uuid)).scalars())
    finally:
        engine.dispose()


def wait_for(check, seconds: float = 90.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_a_frozen_database_holds_no_call_and_loses_no_card(pg, url, tmp_path):
    store = Store(url, spool_dir=tmp_path / "spool", timeout=0.5)
    try:
        store.record([record("before")])
        assert store.writer.flush(timeout=30)
        pg.freeze()
        results: dict = {}

        def calls():
            results["token"] = store.first_use_of_token("https://ehr", "jti-frozen", time.time() + 300)
            results["replay"] = store.first_use_of_token("https://ehr", "jti-frozen", time.time() + 300)
            results["shown"] = store.card_shown_for("fp-unknown")
            results["shown_here"] = None
            results["spooled"] = store.record([record("during")])
            results["shown_here"] = store.card_shown_for("fp-during")  # this process's own card
            try:
                store.record_feedback(
                    "spine-mri-order-select",
                    {"feedback": [{"card": "before", "outcome": "accepted", "outcomeTimestamp": "t"}]},
                )
            except DatabaseUnavailable:
                results["feedback"] = "unavailable"

        caller = threading.Thread(target=calls)
        caller.start()
        caller.join(timeout=120)
        returned_while_frozen = not caller.is_alive()
        assert not store.writer.flush(timeout=1)  # the card waits in the spool
        spooled = [p for p in (tmp_path / "spool").glob("*.jsonl")]
        on_disk = b"".join(p.read_bytes() for p in spooled)
        pg.thaw()
        caller.join(timeout=60)
        assert returned_while_frozen, "a call waited for the frozen database"
        assert results == {
            "token": True,  # the guard of this host took it
            "replay": False,  # and refuses it again
            "shown": None,  # cannot tell
            "spooled": True,
            "shown_here": True,
            "feedback": "unavailable",  # the service answers 503
        }
        assert b'"during"' in on_disk and b"patient-1" not in on_disk  # hashed, never the raw id
        assert store.writer.flush(timeout=90)
        assert cards_in(url) == {"before", "during"}
        # the token taken while the database was frozen is known to it now: no instance takes it again
        assert wait_for(lambda: bool(_count(url, seen_tokens)))
        other = Store(url, spool_dir=tmp_path / "other")
        try:
            assert other.first_use_of_token("https://ehr", "jti-frozen", time.time() + 300) is False
        finally:
            other.close()
    finally:
        pg.thaw()
        store.close()


def _count(url: str, table) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    finally:
        engine.dispose()


def test_a_restart_while_the_database_is_down_replays_everything_once(pg, url, tmp_path):
    spool = tmp_path / "spool"
    first = Store(url, spool_dir=spool, timeout=0.5)  # reached once: the spool remembers it
    first.record([record("a1")])
    assert first.writer.flush(timeout=30)
    pg.stop_server()
    first.record([record("a2"), record("a3", order_reference="ServiceRequest/a1")])  # a3: the same order as a1
    assert not first.writer.flush(timeout=2)
    first.close()  # the process ends; its segment stays for the next
    assert list(spool.glob("*.jsonl"))

    with pytest.raises(StoreError):
        Store(url, spool_dir=tmp_path / "never-reached", timeout=0.5)  # no spool state: a misconfiguration
    second = Store(url, spool_dir=spool, timeout=0.5)  # starts from the spool
    try:
        assert second.started_without_database
        second.record([record("b1")])
        second.start()
        pg.start_server()
        assert wait_for(lambda: second.writer.flush(timeout=1))
        assert cards_in(url) == {"a1", "a2", "a3", "b1"}
        assert not list(spool.glob("*.jsonl"))
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            counted = dict(connection.execute(sa.select(orders.c.latest_card_uuid, orders.c.evaluations)).all())
        engine.dispose()
        assert counted == {"a3": 2, "a2": 1, "b1": 1}  # a1 and a3 are one order, counted once each card
    finally:
        second.close()


# ----------------------------------------------------------------------------- the running service


class Service:
    def __init__(self, env: dict, tmp_path: Path):
        from conftest import ROOT

        from cds_service.cli.processes import free_port, wait_for_http

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        full.update(CDS_LOG_LEVEL="WARNING", **env)
        self.log = tmp_path / f"serve-{self.port}.log"
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, *SERVE, "--port", str(self.port), "--workers", "2", "--threads", "4"],
            cwd=ROOT,
            env=full,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        if not wait_for_http(self.base + "/healthz", self.process, seconds=90):
            self.stop()
            pytest.fail("the service did not start: " + self.log.read_text()[-3000:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except Exception:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def test_the_service_answers_every_hook_through_outage_freeze_and_restart(pg, url, tmp_path):
    """Hooks with authentication on, 4 clients, while PostgreSQL is stopped, frozen, and stopped
    again with the service restarted meanwhile. Every hook is answered 200 (none 500), feedback
    503 with Retry-After while the database is away, and every card answered is stored."""
    from cds_service.web.auth import generate_key_pair, sign_token

    pem, jwk = generate_key_pair("ehr-1")
    trust = tmp_path / "trusted.json"
    trust.write_text(json.dumps({"https://ehr.example.org": {"jwks": {"keys": [jwk]}}}))
    public = "https://cds.example.org"
    env = {
        "CDS_TRUSTED_ISSUERS": str(trust),
        "CDS_DATABASE_URL": url,
        "CDS_PUBLIC_BASE_URL": public,
        "CDS_SPOOL_DIR": str(tmp_path / "spool"),
        "CDS_DATABASE_TIMEOUT_SECONDS": "0.5",
    }
    service = Service(env, tmp_path)
    bodies = [fixtures.hook_request(p) for p in ("lbp-osteoporosis", "lbp-acute-simple", "neck-chronic-axial")]
    lock = threading.Lock()
    answered: set[str] = set()
    statuses: dict[str, dict[int, int]] = {}
    phase = ["up"]
    feedback_statuses: dict[str, int] = {}
    retry_after_seen = []
    stop = threading.Event()
    target = [service.base]

    latencies: dict[str, list[float]] = {}

    def note(kind: int, seconds: float | None = None) -> None:
        with lock:
            counts = statuses.setdefault(phase[0], {})
            counts[kind] = counts.get(kind, 0) + 1
            if seconds is not None:
                latencies.setdefault(phase[0], []).append(seconds)

    def client(number: int) -> None:
        session = requests.Session()
        index = number
        while not stop.is_set():
            index += 1
            token = sign_token("https://ehr.example.org", pem, public + SELECT, "ehr-1")
            started = time.perf_counter()
            try:
                reply = session.post(
                    target[0] + SELECT,
                    json=bodies[index % len(bodies)],
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
            except requests.RequestException:
                note(0)  # no answer (the service restarting)
                time.sleep(0.1)
                continue
            note(reply.status_code, time.perf_counter() - started)
            if reply.status_code == 200:
                cards = [card["uuid"] for card in reply.json()["cards"]]
                with lock:
                    answered.update(cards)
                if cards and index % 7 == 0:
                    feedback_token = sign_token("https://ehr.example.org", pem, public + SELECT + "/feedback", "ehr-1")
                    item = {"card": cards[0], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z"}
                    try:
                        answer = session.post(
                            target[0] + SELECT + "/feedback",
                            json={"feedback": [item]},
                            headers={"Authorization": f"Bearer {feedback_token}"},
                            timeout=30,
                        )
                    except requests.RequestException:
                        continue
                    with lock:
                        key = f"{phase[0]}: {answer.status_code}"
                        feedback_statuses[key] = feedback_statuses.get(key, 0) + 1
                        if answer.status_code == 503:
                            retry_after_seen.append(answer.headers.get("Retry-After"))

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(3)
        phase[0] = "stopped"
        pg.stop_server()
        time.sleep(6)
        pg.start_server()
        phase[0] = "up again"
        time.sleep(4)
        phase[0] = "frozen"
        pg.freeze()
        time.sleep(6)
        pg.thaw()
        phase[0] = "thawed"
        time.sleep(4)
        phase[0] = "stopped, service restarted"
        pg.stop_server()
        time.sleep(2)
        assert service.stop() == 0  # SIGTERM while the database is down: the spool stays on disk
        service = Service(env, tmp_path)  # starts without its database
        target[0] = service.base
        time.sleep(5)
        phase[0] = "back"
        pg.start_server()
        time.sleep(4)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        pg.thaw()
        if not (pg.data / "postmaster.pid").exists():
            pg.start_server()
    try:
        assert wait_for(lambda: answered <= cards_in(url), seconds=120), len(answered - cards_in(url))
    finally:
        service.stop()
    stored = cards_in(url)
    summary = {
        "statuses_by_phase": statuses,
        "hooks_answered_200": sum(s.get(200, 0) for s in statuses.values()),
        "cards_answered": len(answered),
        "cards_stored": len(stored),
        "answered_not_stored": len(answered - stored),
        "stored_not_seen_by_a_client": len(stored - answered),
        "feedback_statuses": feedback_statuses,
        "hook_ms_by_phase": {
            name: {"p50": round(1000 * sorted(v)[len(v) // 2], 1), "max": round(1000 * max(v), 1)}
            for name, v in latencies.items()
        },
        "spool_left": [p.name for p in (tmp_path / "spool").glob("*.jsonl")],
    }
    print("\noutage run:", json.dumps(summary, indent=1))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert all(code in (0, 200) for counts in statuses.values() for code in counts), statuses
    for name in ("stopped", "frozen", "stopped, service restarted"):
        assert statuses.get(name, {}).get(200, 0) > 0, (name, statuses)  # hooks kept being answered
    assert answered - stored == set()
    assert summary["spool_left"] == []
    assert not [key for key in feedback_statuses if key.endswith(": 500")]
    assert all(value and value.isdigit() for value in retry_after_seen)
