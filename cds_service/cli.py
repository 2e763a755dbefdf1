"""The `cds-service` command: serve, evaluate, validate-mappings, demo, report."""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from .discovery import SERVICE_HOOKS


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        try:
            parsed = json.loads(message)
            entry.update(parsed if isinstance(parsed, dict) else {"message": message})
        except ValueError:
            entry["message"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def cmd_serve(args) -> int:
    from gunicorn.app.base import BaseApplication

    from .app import create_app
    from .auth import bound_base_urls
    from .config import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    base_urls = bound_base_urls(args.host, args.port)  # a token's aud may name these (and CDS_PUBLIC_BASE_URL)
    problem = settings.authentication_problem(base_urls)
    if problem:
        print(f"refusing to start: {problem}", file=sys.stderr)
        return 2
    if settings.trusted_issuers is None:
        print("\n*** WARNING: AUTHENTICATION IS OFF (CDS_ALLOW_UNAUTHENTICATED=1). Any caller can use this "
              "service and send it patient data. Development only. ***\n", file=sys.stderr, flush=True)
    else:
        from .auth import TrustConfigError, load_trusted_issuers

        try:
            issuers = load_trusted_issuers(settings.trusted_issuers)
        except TrustConfigError as error:
            print(f"refusing to start: {error}", file=sys.stderr)
            return 2
        print(f"trusted CDS clients: {', '.join(sorted(issuers))}", file=sys.stderr)

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)

        def load(self):
            return create_app(settings, base_urls)

    print(f"spine-imaging CDS serving on http://{args.host}:{args.port}/cds-services "
          f"({args.workers} workers x {args.threads} threads)", file=sys.stderr, flush=True)
    Server().run()
    return 0


def _service_for(body: dict, explicit: str | None) -> str:
    if explicit:
        return explicit
    for service_id, hook in SERVICE_HOOKS.items():
        if body.get("hook") == hook:
            return service_id
    raise SystemExit(f"no service answers hook {body.get('hook')!r}; pass --service")


def cmd_evaluate(args) -> int:
    from .hooks import HookRequestError, evaluate_hook
    from .mappings import get_mappings

    path = Path(args.request)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"cannot read {path}: {error}", file=sys.stderr)
        return 2
    as_of = date.fromisoformat(args.as_of) if args.as_of else None
    try:
        result = evaluate_hook(_service_for(body, args.service), body, get_mappings(), as_of=as_of)
    except HookRequestError as error:
        print(f"invalid request ({error.status}): {error.message}", file=sys.stderr)
        return 2
    print(json.dumps(result.response, indent=2))
    return 0


def cmd_validate_mappings(args) -> int:
    from .mapping_validation import validate_mappings
    from .mappings import default_mappings_dir

    directory = Path(args.dir) if args.dir else default_mappings_dir()
    errors = validate_mappings(directory)
    if errors:
        print(f"{len(errors)} problem(s) in {directory}:", file=sys.stderr)
        for error in errors:
            print(f"  - {error}", file=sys.stderr)
        return 1
    print(f"mappings in {directory}: all files valid, all codes checked")
    return 0


def cmd_report(args) -> int:
    from .config import Settings
    from .feedback import Store

    path = Path(args.db) if args.db else Settings.from_env().feedback_db
    if not path.exists():
        print(f"no database at {path} yet (set CDS_FEEDBACK_DB or pass --db)", file=sys.stderr)
        return 1
    print(json.dumps(Store(path).report(), indent=2))
    return 0


def cmd_keygen(args) -> int:
    from .auth import generate_key_pair

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kid = args.kid or f"{args.alg.lower()}-{int(time.time())}"
    pem, jwk = generate_key_pair(kid, args.alg)
    key_path = out / f"{kid}.pem"
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    trust_path = out / "trusted-issuers.json"
    trust = json.loads(trust_path.read_text()) if trust_path.exists() else {}
    trust.setdefault(args.issuer, {"jwks": {"keys": []}})
    trust[args.issuer].setdefault("jwks", {"keys": []})["keys"].append(jwk)
    trust_path.write_text(json.dumps(trust, indent=2) + "\n")
    print(f"private key: {key_path} (kid {kid})\ntrusted issuers file: {trust_path} "
          f"(point CDS_TRUSTED_ISSUERS at it)")
    return 0


def cmd_token(args) -> int:
    from .auth import sign_token

    key_path = Path(args.key)
    try:
        pem = key_path.read_bytes()
    except OSError as error:
        print(f"cannot read the key: {error}", file=sys.stderr)
        return 2
    kid = args.kid or key_path.stem
    print(sign_token(args.issuer, pem, args.aud, kid, args.alg, args.lifetime))
    return 0


def cmd_seed(args) -> int:
    from . import fixtures
    from .fhir_server import seed_bundle

    paths = [Path(p) for p in args.files] or sorted((fixtures.FIXTURES_DIR / "patients").glob("*.json"))
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    import requests

    session = requests.Session()
    if args.wait:
        deadline = time.monotonic() + args.wait
        while True:
            try:
                if session.get(args.fhir_base.rstrip("/") + "/metadata", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                print(f"{args.fhir_base} did not answer /metadata within {args.wait} s", file=sys.stderr)
                return 1
            time.sleep(2)
    failed = 0
    for path in paths:
        try:
            bundle = fixtures.load_json(path) if not args.keep_dates else json.loads(path.read_text())
            results = seed_bundle(args.fhir_base, bundle, session, headers)
        except (OSError, ValueError, RuntimeError, requests.RequestException) as error:
            failed += 1
            print(f"{path.name}: FAILED: {error}", file=sys.stderr)
            continue
        summary = ", ".join(f"{name} {status.split()[0]}" for name, status in results)
        print(f"{path.name}: {len(results)} resources ({summary})")
    print(f"seeded {len(paths) - failed} of {len(paths)} bundles into {args.fhir_base}")
    return 1 if failed else 0


def render_card(card: dict) -> str:
    lines = [f"[{card['indicator'].upper()}] {card['summary']}", f"  source: {card['source']['label']}"]
    for suggestion in card.get("suggestions", []):
        lines.append(f"  suggestion: {suggestion['label']}")
    return "\n".join(lines)


def cmd_demo(args) -> int:
    import requests

    from . import fixtures
    from .auth import generate_key_pair, sign_token
    from .fhir_server import LocalFhirServer, seed_bundle
    from .processes import wait_for_http

    base = f"http://127.0.0.1:{args.port}"
    demo_dir = Path("var/demo")
    demo_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting the local FHIR server on http://127.0.0.1:{args.fhir_port}/fhir ...", flush=True)
    fhir = LocalFhirServer(args.fhir_port)
    try:
        fhir_base = fhir.start()
    except RuntimeError as error:
        print(f"cannot start the local FHIR server: {error}", file=sys.stderr)
        return 1
    session = requests.Session()
    for path in sorted((fixtures.FIXTURES_DIR / "patients").glob("*.json")):
        seed_bundle(fhir_base, fixtures.load_json(path), session)
    print(f"seeded {len(fixtures.manifest())} fixture patients into {fhir_base}", flush=True)

    # The demo is a CDS client of its own: a fresh key pair, trusted by the service it starts.
    issuer, kid = "urn:spine-imaging-cds:demo-client", "demo-es384"
    pem, jwk = generate_key_pair(kid)
    key_path = demo_dir / f"{kid}.pem"
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    (demo_dir / "trusted-issuers.json").write_text(json.dumps({issuer: {"jwks": {"keys": [jwk]}}}, indent=2))
    env = dict(os.environ)
    env.setdefault("CDS_FEEDBACK_DB", str(demo_dir / "feedback.sqlite3"))
    env.setdefault("CDS_TRUSTED_ISSUERS", str(demo_dir / "trusted-issuers.json"))
    env["CDS_FHIR_ALLOWED_SERVERS"] = ",".join(filter(None, [env.get("CDS_FHIR_ALLOWED_SERVERS"), fhir_base]))
    server = subprocess.Popen([sys.executable, "-m", "cds_service", "serve", "--host", "127.0.0.1",
                               "--port", str(args.port)], env=env)
    try:
        if not wait_for_http(f"{base}/healthz", server):
            print("the service did not start", file=sys.stderr)
            return 1
        patients = args.patients or ["lbp-acute-simple", "lbp-cauda-reason-only", "lbp-radic-failed-pt-wwo",
                                     "lbp-osteoporosis", "neck-myelopathy-wwo", "thx-acute-pain"]
        for index, patient_id in enumerate(patients):
            body = fixtures.hook_request(patient_id, "order-select")
            body["fhirServer"] = fhir_base
            how = "with full prefetch"
            if index % 2 == 1:
                body["prefetch"] = {}  # the service reads the local FHIR server instead
                how = "without prefetch (read from the FHIR server)"
            url = f"{base}/cds-services/spine-mri-order-select"
            token = sign_token(issuer, pem, url, kid)
            started = time.perf_counter()
            reply = requests.post(url, json=body, timeout=10, headers={"Authorization": f"Bearer {token}"})
            elapsed = (time.perf_counter() - started) * 1000
            print(f"\n=== {patient_id}: order-select {how} -> HTTP {reply.status_code} in {elapsed:.0f} ms")
            for card in reply.json().get("cards", []):
                print(render_card(card))
            for action in reply.json().get("systemActions", []):
                rating = action["resource"]["extension"][0]["valueCodeableConcept"]["coding"]
                print(f"  PAMA rating: {rating[0]['code']} / {rating[1]['code']}")
        print(f"\nThe service keeps running at {base}/cds-services with the FHIR server at {fhir_base} "
              "(Ctrl-C stops both).\n"
              f"Call it yourself: TOKEN=$(.venv/bin/cds-service token --issuer {issuer} --key {key_path} "
              f"--aud {base}/cds-services/spine-mri-order-select)", flush=True)
        if args.no_wait:
            return 0
        server.wait()
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=15)
        fhir.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description="Spine MRI appropriateness CDS Hooks service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the CDS Hooks API with gunicorn")
    serve.add_argument("--host", default=os.environ.get("CDS_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("CDS_PORT", "8765")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("CDS_WORKERS", "2")))
    serve.add_argument("--threads", type=int, default=int(os.environ.get("CDS_THREADS", "8")))
    serve.set_defaults(func=cmd_serve)

    evaluate = commands.add_parser("evaluate", help="run one hook request offline and print the response")
    evaluate.add_argument("request", help="a CDS Hooks request JSON file")
    evaluate.add_argument("--service", choices=sorted(SERVICE_HOOKS), help="default: from the request's hook")
    evaluate.add_argument("--as-of", help="evaluate as of this date (YYYY-MM-DD) instead of today")
    evaluate.set_defaults(func=cmd_evaluate)

    validate = commands.add_parser("validate-mappings", help="check mappings/ against schemas and code checks")
    validate.add_argument("--dir", help="mappings directory (default: CDS_MAPPINGS_DIR or ./mappings)")
    validate.set_defaults(func=cmd_validate_mappings)

    demo = commands.add_parser("demo", help="serve, fire order-select for demo patients, print the cards")
    demo.add_argument("--port", type=int, default=int(os.environ.get("CDS_PORT", "8765")))
    demo.add_argument("--fhir-port", type=int, default=int(os.environ.get("CDS_DEMO_FHIR_PORT", "8080")))
    demo.add_argument("--no-wait", action="store_true", help="stop the service after the demo requests")
    demo.add_argument("patients", nargs="*", help="fixture patient ids (default: a representative few)")
    demo.set_defaults(func=cmd_demo)

    keygen = commands.add_parser("keygen", help="create a CDS client key pair and a trusted-issuers file")
    keygen.add_argument("--issuer", required=True, help="the client's iss")
    keygen.add_argument("--out", default="var/keys", help="directory for the key and trusted-issuers.json")
    keygen.add_argument("--kid", help="key id (default: generated)")
    keygen.add_argument("--alg", default="ES384", choices=["ES384", "RS384", "ES256", "RS256"])
    keygen.set_defaults(func=cmd_keygen)

    token = commands.add_parser("token", help="print a signed client JWT to call the service with curl")
    token.add_argument("--issuer", required=True)
    token.add_argument("--key", required=True, help="private key PEM (its file name stem is the default kid)")
    token.add_argument("--aud", required=True, help="the exact endpoint URL being called")
    token.add_argument("--kid", help="key id (default: the key file's name without .pem)")
    token.add_argument("--alg", default="ES384", choices=["ES384", "RS384", "ES256", "RS256"])
    token.add_argument("--lifetime", type=int, default=300, help="seconds until exp (default 300)")
    token.set_defaults(func=cmd_token)

    seed = commands.add_parser("seed", help="load fixture Bundles into a FHIR R4 server (transaction, ids kept)")
    seed.add_argument("--fhir-base", required=True, help="the FHIR server's base URL")
    seed.add_argument("--token", help="a bearer token for the FHIR server")
    seed.add_argument("--wait", type=int, default=0, help="wait up to this many seconds for the server's /metadata")
    seed.add_argument("--keep-dates", action="store_true",
                      help="do not move the fixtures' dates to today (they are written for 2026-11-22)")
    seed.add_argument("files", nargs="*", help="transaction Bundle files (default: fixtures/patients/*.json)")
    seed.set_defaults(func=cmd_seed)

    report = commands.add_parser("report", help="counts of verdicts and feedback outcomes for analysts")
    report.add_argument("--db", help="the SQLite file (default: CDS_FEEDBACK_DB)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
