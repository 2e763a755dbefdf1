"""`cds-service demo`: the product on its embedded defaults, as a new user first meets it.

Starts a local FHIR server (or uses `--fhir-base`), seeds the fixture patients, starts the
service trusting a key pair of its own, fires order-select for a few patients and prints their
cards. Logs go to files under var/demo/, so the terminal shows cards, not log lines. Any way
the demo stops (Ctrl-C, SIGTERM, SIGHUP, its terminal closing, even SIGKILL on Linux) stops
the FHIR server and the service it started.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .checks import CliError, check_fhir_base, checked_mappings, ensure_port_free

DEMO_DIR = Path("var/demo")
DEFAULT_PATIENTS = [
    "lbp-acute-simple",
    "lbp-cauda-reason-only",
    "lbp-radic-failed-pt-wwo",
    "lbp-weight-loss",
    "lbp-monoplegia-old",
    "neck-myelopathy-wwo",
    "thx-acute-pain",
]
ISSUER, KID = "urn:spine-imaging-cds:demo-client", "demo-es384"
SERVICE_ID = "spine-mri-order-select"


class _Stopped(Exception):
    """A signal asked the demo to stop."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _stop_on_signals() -> dict:
    """Turn the stop signals into _Stopped (so cleanup runs); returns the handlers they replace."""

    def stop(signum, _frame):
        raise _Stopped(signal.Signals(signum).name)

    return {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}


def _check_patients(requested: list[str]) -> list[str]:
    from . import fixtures

    known = [case["patient"] for case in fixtures.manifest()]
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise CliError(
            f"unknown fixture patient {', '.join(repr(p) for p in unknown)}: choose from "
            f"fixtures/manifest.json ({len(known)} patients, e.g. {', '.join(known[:4])})"
        )
    return requested or DEFAULT_PATIENTS


def _rating(action: dict) -> str | None:
    from ..hooks.cards import PAMA_RATING_SYSTEM, PAMA_URLS, VERDICT_SYSTEM

    for extension in action.get("resource", {}).get("extension", []):
        if extension.get("url") == PAMA_URLS["rating"][0]:
            codes = {c.get("system"): c.get("code") for c in extension["valueCodeableConcept"]["coding"]}
            return f"{codes.get(PAMA_RATING_SYSTEM)} ({codes.get(VERDICT_SYSTEM)})"
    return None


def render_card(card: dict) -> str:
    """A card as a clinician would read it first: verdict, why, what to do, on what authority."""
    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="    ")
    lines = [f"[{card['indicator'].upper()}] {card['summary']}"]
    # The detail's parts: "**Why:** ...", "**Now:** ...", "**Confirm:** ...", "**Source:** ..."
    for part in card["detail"].split("\n\n"):
        head, _, text = part.partition(":** ")
        if head.startswith("**") and head[2:] in ("Why", "Now", "Confirm"):
            lines.append(wrap.fill(f"{head[2:].lower()}: " + re.sub(r"\\(.)", r"\1", text)))
    for suggestion in card.get("suggestions", []):
        recommended = " (recommended)" if suggestion.get("isRecommended") else ""
        lines.append(f"  suggestion: {suggestion['label']}{recommended}")
    lines.append(f"  guideline: {card['source']['label']}")
    return "\n".join(lines)


def _start_service(port: int, fhir_base: str, key_dir: Path, log_path: Path, dashboard_token: str) -> subprocess.Popen:
    from ..web.auth import generate_key_pair
    from .processes import die_with_parent, serve_command

    pem, jwk = generate_key_pair(KID)
    key_path = key_dir / f"{KID}.pem"
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    (key_dir / "trusted-issuers.json").write_text(json.dumps({ISSUER: {"jwks": {"keys": [jwk]}}}, indent=2))
    env = dict(os.environ)
    env["CDS_DASHBOARD_TOKEN"] = dashboard_token
    env["CDS_TRUSTED_ISSUERS"] = str(key_dir / "trusted-issuers.json")
    env.pop("CDS_ALLOW_UNAUTHENTICATED", None)
    env["CDS_FHIR_ALLOWED_SERVERS"] = ",".join(filter(None, [env.get("CDS_FHIR_ALLOWED_SERVERS"), fhir_base]))
    with log_path.open("w") as log:
        return subprocess.Popen(
            serve_command(port),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def _fire(base: str, fhir_base: str, patients: list[str], key_path: Path, always_fetch: bool) -> None:
    import requests

    from ..web.auth import sign_token
    from . import fixtures

    pem = key_path.read_bytes()
    url = f"{base}/cds-services/{SERVICE_ID}"
    for index, patient_id in enumerate(patients):
        body = fixtures.hook_request(patient_id, "order-select")
        body["fhirServer"] = fhir_base
        how = "with full prefetch"
        if always_fetch or index % 2 == 1:
            body["prefetch"] = {}  # the service reads the FHIR server instead
            how = "without prefetch: the service read the FHIR server"
        token = sign_token(ISSUER, pem, url, KID)
        started = time.perf_counter()
        reply = requests.post(url, json=body, timeout=15, headers={"Authorization": f"Bearer {token}"})
        elapsed = (time.perf_counter() - started) * 1000
        print(f"\n=== {patient_id}: order-select {how} -> HTTP {reply.status_code} in {elapsed:.0f} ms")
        try:
            response = reply.json()
        except ValueError:
            response = {"error": reply.text[:200]}
        if reply.status_code != 200:
            print(f"  {response.get('error', response)}")
            continue
        for card in response.get("cards", []):
            print(render_card(card))
        for action in response.get("systemActions", []):
            rating = _rating(action)
            print(f"  PAMA rating: {rating}" if rating else "  PAMA rating: none (the order cannot be rated)")


def _fill_history() -> str:
    """A few weeks of synthetic orders and feedback in the service's database (once); its description."""
    from ..utilization.store import Store, database_url, describe_url
    from ..web.config import Settings
    from .demo_history import fill_demo_history

    settings = Settings.from_env()
    store = Store.from_settings(settings)
    try:
        added = fill_demo_history(store, checked_mappings())
    finally:
        store.close()
    if added:
        print(
            f"added {added} synthetic orders of demo history (the last 6 weeks) for the report and dashboard",
            flush=True,
        )
    return describe_url(database_url(settings))


def run_demo(args) -> int:
    import requests

    from . import fixtures
    from .local_fhir import LocalFhirServer, seed_bundle
    from .processes import stop_process, wait_for_http

    patients = _check_patients(args.patients)
    checked_mappings()
    ensure_port_free("127.0.0.1", args.port, "--port or CDS_PORT")
    if not args.fhir_base:
        ensure_port_free("127.0.0.1", args.fhir_port, "--fhir-port or CDS_DEMO_FHIR_PORT")
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    service_log, fhir_log = DEMO_DIR / "service.log", DEMO_DIR / "fhir-server.log"
    base = f"http://127.0.0.1:{args.port}"
    session = requests.Session()
    fhir = server = None
    previous_handlers = _stop_on_signals()
    try:
        if args.fhir_base:
            fhir_base = check_fhir_base(args.fhir_base, session)
            print(f"using the FHIR server at {fhir_base}", flush=True)
        else:
            print(f"starting a local FHIR server on http://127.0.0.1:{args.fhir_port}/fhir ...", flush=True)
            fhir = LocalFhirServer(args.fhir_port, log_path=fhir_log)
            try:
                fhir_base = fhir.start()
            except RuntimeError as error:
                raise CliError(f"cannot start the local FHIR server: {error} (log: {fhir_log})", 1) from None
        if not (args.fhir_base and args.no_seed):
            paths = sorted((fixtures.FIXTURES_DIR / "patients").glob("*.json"))
            for path in paths:
                seed_bundle(fhir_base, fixtures.load_json(path), session)
            print(f"seeded {len(paths)} fixture patients into {fhir_base} (dates moved to today)", flush=True)
        dashboard_token = os.environ.get("CDS_DASHBOARD_TOKEN") or secrets.token_urlsafe(12)
        server = _start_service(args.port, fhir_base, DEMO_DIR, service_log, dashboard_token)
        if not wait_for_http(f"{base}/healthz", server):
            last = service_log.read_text(errors="replace").strip().splitlines()[-1:] if service_log.exists() else []
            raise CliError(f"the service did not start: {last[0] if last else 'no output'} (log: {service_log})", 1)
        print(f"service up at {base} (log: {service_log})", flush=True)
        database = _fill_history()
        _fire(base, fhir_base, patients, DEMO_DIR / f"{KID}.pem", always_fetch=bool(args.fhir_base))
        url = f"{base}/cds-services/{SERVICE_ID}"
        print(
            f"""
The service keeps running at {base}/cds-services, reading the FHIR server at {fhir_base}.
  call it:   TOKEN=$(.venv/bin/cds-service token --issuer {ISSUER} --key {DEMO_DIR / (KID + ".pem")} --aud {url})
             curl -s -X POST {url} -H "Authorization: Bearer $TOKEN" \\
                  -H 'Content-Type: application/json' -d @fixtures/hooks/lbp-osteoporosis.order-select.json
  logs:      {service_log}{"" if args.fhir_base else f", {fhir_log}"}
  database:  {database} (evaluations, feedback, token ids; demo history marked synthetic)
  report:    .venv/bin/cds-service report            (or --format html --out report.html)
  dashboard: {base}/dashboard  (user: any, password: {dashboard_token})""",
            flush=True,
        )
        if args.no_wait:
            return 0
        print("Ctrl-C stops the service" + ("" if args.fhir_base else " and the FHIR server") + ".", flush=True)
        server.wait()
        raise CliError(f"the service stopped unexpectedly (exit {server.returncode}; log: {service_log})", 1)
    except _Stopped as stopped:
        print(f"\nstopping ({stopped})", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for signum in STOP_SIGNALS:  # finish cleaning up even if Ctrl-C is pressed again
            signal.signal(signum, signal.SIG_IGN)
        stop_process(server, 15)
        if fhir is not None:
            fhir.stop()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
