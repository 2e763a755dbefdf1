"""The `cds-service` command: serve, evaluate, validate-mappings, demo, seed, keygen, token, report.

Every mistake a user can make here (a bad file, a bad setting, a port in use, a closed pipe)
ends in one line on stderr and a non-zero exit, never a traceback: commands raise `CliError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

from ..hooks.discovery import SERVICE_HOOKS
from ..web.logs import AUTHENTICATION_OFF, JsonGunicornLogger, JsonLogFormatter, LogEntry
from .checks import CliError, check_fhir_base, checked_mappings, ensure_port_free

GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (Python's default: 700)


def tune_gc_for_serving() -> None:
    """Once the app is built: the mappings, schemas and code caches live as long as the worker, so
    they are kept out of every collection, and young objects are collected less often (a
    1,000-resource body makes hundreds of thousands of containers, each collection walking them).
    Measured with bench/bench.py (docs/speed.md), whose bare app is tuned the same way."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _load_json_file(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise CliError(
            f"{path} is not UTF-8 text, as JSON must be (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}; save it as UTF-8)"
        ) from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise CliError(f"{path} is not JSON ({error})") from None
    except RecursionError:
        raise CliError(f"{path} nests JSON too deeply to read (a FHIR resource nests a dozen levels)") from None


# ----------------------------------------------------------------------------- serve


def cmd_serve(args) -> int:
    from gunicorn.app.base import BaseApplication

    from ..web.app import create_app
    from ..web.auth import bound_base_urls
    from ..web.config import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    base_urls = bound_base_urls(args.host, args.port)  # a token's aud may name these (and CDS_PUBLIC_BASE_URL)
    problem = settings.authentication_problem(base_urls)
    if problem:
        raise CliError(f"refusing to start: {problem}")
    checked_mappings(settings.mappings_dir)
    startup = logging.getLogger("cds_service.serve")
    if settings.trusted_issuers is None:
        startup.warning(LogEntry(event="startup", warning=AUTHENTICATION_OFF))
    else:
        from ..web.auth import TrustConfigError, load_trusted_issuers

        try:
            issuers = load_trusted_issuers(settings.trusted_issuers)
        except TrustConfigError as error:
            raise CliError(f"refusing to start: {error}") from None
        startup.info(LogEntry(event="startup", trusted_clients=sorted(issuers)))
    ensure_port_free(args.host, args.port, "--port or CDS_PORT")
    from ..utilization.store import Store, StoreError, database_url, describe_url

    try:  # migrate once here, before gunicorn forks its workers
        Store.from_settings(settings).close()
    except StoreError as error:
        raise CliError(f"refusing to start: {error}") from None
    startup.info(
        LogEntry(
            event="startup",
            database=describe_url(database_url(settings)),
            mode=settings.mode,
            evaluation_log="on" if settings.record_evaluations else "OFF (CDS_RECORD_EVALUATIONS=0)",
            patient_hash_key="CDS_PATIENT_HASH_KEY" if settings.patient_hash_key else "kept in the database",
        )
    )

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            self.cfg.set("logger_class", JsonGunicornLogger)  # gunicorn's own lines as JSON, like ours
            # gunicorn's control socket defaults to one path per user: instances would replace and
            # delete each other's. The service needs none.
            self.cfg.set("control_socket_disable", True)

        def load(self):
            # migrated above, once; the master said whether authentication is off
            app = create_app(settings, base_urls, migrate=False, announce=False)
            tune_gc_for_serving()
            return app

    startup.info(
        LogEntry(
            event="startup",
            message=f"spine-imaging CDS serving on http://{args.host}:{args.port}/cds-services",
            workers=args.workers,
            threads=args.threads,
        )
    )
    Server().run()
    return 0


# ----------------------------------------------------------------------------- evaluate


def _service_for(body, path: Path, explicit: str | None) -> str:
    if not isinstance(body, dict):
        kind = {"list": "an array", "str": "a string"}.get(type(body).__name__, type(body).__name__)
        raise CliError(f"{path} is not a CDS Hooks request: expected a JSON object, got {kind}")
    if explicit:
        return explicit
    if "hook" not in body:
        raise CliError(f"{path} is not a CDS Hooks request: 'hook' is missing (or name the service with --service)")
    for service_id, hook in SERVICE_HOOKS.items():
        if body.get("hook") == hook:
            return service_id
    raise CliError(
        f"no service answers hook {body.get('hook')!r} (this service answers "
        f"{', '.join(sorted(SERVICE_HOOKS.values()))}); pass --service"
    )


def cmd_evaluate(args) -> int:
    from ..hooks.evaluation import HookRequestError, evaluate_hook

    path = Path(args.request)
    body = _load_json_file(path, "the request")
    service_id = _service_for(body, path, args.service)
    mappings = checked_mappings()
    try:
        result = evaluate_hook(service_id, body, mappings, as_of=args.as_of)
    except HookRequestError as error:
        raise CliError(f"{path}: the service would answer {error.status}: {error.message}") from None
    except RecursionError:  # JSON that parses but nests deeper than the checks can walk
        raise CliError(f"{path}: the request nests JSON too deeply (the service answers 400 to it)") from None
    print(json.dumps(result.response, indent=2))
    return 0


# ----------------------------------------------------------------------------- mappings


def cmd_validate_mappings(args) -> int:
    from ..clinical.mappings import default_mappings_dir
    from ..clinical.validation import check_mappings

    directory = Path(args.dir) if args.dir else default_mappings_dir()
    problems = check_mappings(directory)
    if problems:
        print(
            f"{len(problems)} problem(s) in {directory}; cds-service serve refuses to start on them:", file=sys.stderr
        )
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"mappings in {directory}: all files valid, all codes checked, rules and mappings fit (as serve checks)")
    return 0


def report_engine(db: str | None):
    """A read-only engine on the evaluation database (`--db` file, else the configured one), or CliError."""
    import sqlalchemy as sa

    from ..utilization.store import describe_url, schema_problem
    from ..web.config import Settings

    settings = Settings.from_env()
    if db or not settings.database_url:
        path = Path(db) if db else settings.feedback_db
        if not path.is_file():
            raise CliError(
                f"no database at {path} yet (run the service or the demo first, or pass --db FILE; "
                "the service writes to CDS_DATABASE_URL or CDS_FEEDBACK_DB)",
                1,
            )
        # read-only: a file that is not our database is reported, never written to
        url, shown = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true", str(path)
    else:
        url, shown = settings.database_url, describe_url(settings.database_url)
    try:
        engine = sa.create_engine(url)
    except sa.exc.ArgumentError:
        raise CliError(f"CDS_DATABASE_URL is not a database URL: {shown}", 2) from None
    problem = schema_problem(engine)
    if problem:
        raise CliError(f"cannot report from {shown}: {problem}", 1)
    return engine


def cmd_report(args) -> int:
    from datetime import timedelta

    from ..utilization.charts import render_html
    from ..utilization.render import RENDERERS, render_orders_csv
    from ..utilization.report import Filters, Options, Window, apply_filters, build_report, load_departments
    from ..web.config import Settings

    if args.format == "html" and not args.out:
        raise CliError("--format html writes a file: add --out report.html")
    until = args.until or datetime.now(UTC).date()
    since = args.since or until - timedelta(days=29)
    if since > until:
        raise CliError(f"--since {since} is after --until {until}")
    settings = Settings.from_env()
    try:
        departments = load_departments(Path(args.departments) if args.departments else settings.departments_file)
    except ValueError as error:
        raise CliError(str(error)) from None
    options = Options(
        top=args.top,
        min_orders=args.min_orders,
        unsigned_after_hours=args.unsigned_after or settings.unsigned_after_hours,
        departments=departments,
    )
    filters = Filters(region=args.region, clinician=args.clinician, site=args.site, mode=args.mode)
    window = Window(since, until)
    if args.format == "orders-csv":
        from ..utilization.report import order_table

        rows = apply_filters(order_table(report_engine(args.db), window, options), filters)
        rendered, count = render_orders_csv(rows), len(rows)
    else:
        report = build_report(report_engine(args.db), window, filters=filters, options=options)
        rendered = render_html(report) if args.format == "html" else RENDERERS[args.format](report)
        count = report["orders"]
    if args.out:
        try:
            Path(args.out).write_text(rendered, encoding="utf-8", newline="")
        except OSError as error:
            raise CliError(f"cannot write {args.out}: {error.strerror or error}") from None
        print(f"{args.format} report of {count} orders ({since} to {until}, UTC) written to {args.out}")
    else:
        sys.stdout.write(rendered)
    return 0


# ----------------------------------------------------------------------------- keys and tokens


def cmd_keygen(args) -> int:
    from ..web.auth import generate_key_pair

    out = Path(args.out)
    kid = args.kid or f"{args.alg.lower()}-{int(time.time())}"
    trust_path = out / "trusted-issuers.json"
    trust = _load_json_file(trust_path, "the trusted-issuers file") if trust_path.exists() else {}
    if not isinstance(trust, dict):
        raise CliError(f"{trust_path} is not a trusted-issuers file (expected a JSON object)")
    pem, jwk = generate_key_pair(kid, args.alg)
    key_path = out / f"{kid}.pem"
    try:
        out.mkdir(parents=True, exist_ok=True)
        key_path.write_bytes(pem)
        key_path.chmod(0o600)
        trust.setdefault(args.issuer, {"jwks": {"keys": []}})
        trust[args.issuer].setdefault("jwks", {"keys": []})["keys"].append(jwk)
        trust_path.write_text(json.dumps(trust, indent=2) + "\n")
    except OSError as error:
        raise CliError(f"cannot write the key pair into {out}: {error.strerror or error}") from None
    print(f"private key: {key_path} (kid {kid})\ntrusted issuers file: {trust_path} (point CDS_TRUSTED_ISSUERS at it)")
    return 0


def signing_algorithm(pem: bytes, requested: str | None, where: str) -> str:
    """The JWT algorithm for a private key: the one asked for if the key can make it, else the key's own."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CliError(f"{where} is not an unencrypted PEM private key (make one with cds-service keygen)") from None
    fits: tuple[str, ...]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        fits = {"secp384r1": ("ES384",), "secp256r1": ("ES256",)}.get(key.curve.name, ())
        kind = f"an EC {key.curve.name} key"
    elif isinstance(key, rsa.RSAPrivateKey):
        fits, kind = ("RS384", "RS256"), "an RSA key"
    else:
        fits, kind = (), f"a {type(key).__name__} key"
    if not fits:
        raise CliError(f"{where} is {kind}; CDS Hooks clients sign with RS384/ES384 (RSA, EC P-384) or ES256 (P-256)")
    if requested and requested not in fits:
        raise CliError(f"--alg {requested} cannot be signed with {where}: it is {kind} (use --alg {' or '.join(fits)})")
    return requested or fits[0]


def cmd_token(args) -> int:
    from ..fhir.outbound import is_base_url
    from ..web.auth import sign_token

    if not is_base_url(args.aud):  # the service compares aud with the absolute URL of the endpoint called
        raise CliError(
            f"--aud must be the absolute http(s) URL of the endpoint called, e.g. "
            f"http://127.0.0.1:8765/cds-services/spine-mri-order-select; got {args.aud[:200]!r}"
        )
    key_path = Path(args.key)
    try:
        pem = key_path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read the key {key_path}: {error.strerror or error}") from None
    algorithm = signing_algorithm(pem, args.alg, str(key_path))
    kid = args.kid or key_path.stem
    print(sign_token(args.issuer, pem, args.aud, kid, algorithm, args.lifetime))
    return 0


# ----------------------------------------------------------------------------- FHIR servers


def cmd_seed(args) -> int:
    import requests

    from . import fixtures
    from .local_fhir import seed_bundle

    paths = [Path(p) for p in args.files] or sorted((fixtures.FIXTURES_DIR / "patients").glob("*.json"))
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    session = requests.Session()
    base = check_fhir_base(args.fhir_base, session, args.wait)
    failed = 0
    for path in paths:
        try:
            bundle = json.loads(path.read_text(encoding="utf-8")) if args.keep_dates else fixtures.load_json(path)
            results = seed_bundle(base, bundle, session, headers)
        except (OSError, ValueError, RuntimeError, requests.RequestException) as error:
            failed += 1
            print(f"{path.name}: FAILED: {' '.join(str(error).split())}", file=sys.stderr)
            continue
        summary = ", ".join(f"{name} {status.split()[0]}" for name, status in results)
        print(f"{path.name}: {len(results)} resources ({summary})")
    print(f"seeded {len(paths) - failed} of {len(paths)} bundles into {base}")
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


# ----------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(low: int, high: int | None, setting: str | None):
    def parse(text: str) -> int:
        source = f" (from the command line or {setting})" if setting else ""
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}{source}") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low}-{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"expected {bounds}, got {value}{source}")
        return value

    return parse


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected more than 0 hours, got {text!r}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


PORT = _number(1, 65535, None)

SERVE_DESCRIPTION = """\
Serve the CDS Hooks API (discovery: GET /cds-services) with gunicorn's gthread workers.

Before the first call, set up authentication: CDS_TRUSTED_ISSUERS=FILE names the CDS clients
whose signed JWTs are accepted (cds-service keygen writes such a file; docs/integrating.md), or
CDS_ALLOW_UNAUTHENTICATED=1 turns authentication off, for a local trial only. With neither,
serve refuses to start. A client signs the URL it calls as the token's aud: on the address
given by --host and --port, or on CDS_PUBLIC_BASE_URL when set (then only there: needed behind
a proxy and on a wildcard address).

Facing a network, put nginx in front (deploy/nginx/). Every setting: docs/operations.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cds-service", description="Spine MRI appropriateness CDS Hooks service")
    commands = parser.add_subparsers(dest="command", required=True)
    env = os.environ.get

    serve = commands.add_parser(
        "serve",
        help="serve the CDS Hooks API with gunicorn",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host",
        default=env("CDS_HOST", "127.0.0.1"),
        help="address to listen on (default 127.0.0.1, or CDS_HOST when set); "
        "a wildcard such as 0.0.0.0 needs CDS_PUBLIC_BASE_URL",
    )
    serve.add_argument(
        "--port",
        type=_number(1, 65535, "CDS_PORT"),
        default=env("CDS_PORT", "8765"),
        help="port to listen on (default 8765, or CDS_PORT when set)",
    )
    serve.add_argument(
        "--workers",
        type=_number(1, 64, "CDS_WORKERS"),
        default=env("CDS_WORKERS", "4"),
        help="gunicorn worker processes, 1-64 (default 4, or CDS_WORKERS when set)",
    )
    serve.add_argument(
        "--threads",
        type=_number(1, 256, "CDS_THREADS"),
        default=env("CDS_THREADS", "2"),
        help="threads per worker, 1-256 (default 2, or CDS_THREADS when set); a hook that reads the EHR's "
        "FHIR server holds its thread up to CDS_FHIR_BUDGET_SECONDS",
    )
    serve.set_defaults(func=cmd_serve)

    evaluate = commands.add_parser("evaluate", help="run one hook request offline and print the response")
    evaluate.add_argument("request", help="a CDS Hooks request JSON file")
    evaluate.add_argument("--service", choices=sorted(SERVICE_HOOKS), help="default: from the request's hook")
    evaluate.add_argument("--as-of", type=_iso_date, help="evaluate as of this date (YYYY-MM-DD) instead of today")
    evaluate.set_defaults(func=cmd_evaluate)

    validate = commands.add_parser("validate-mappings", help="check mappings/ against schemas and code checks")
    validate.add_argument("--dir", help="mappings directory (default: CDS_MAPPINGS_DIR or ./mappings)")
    validate.set_defaults(func=cmd_validate_mappings)

    demo = commands.add_parser("demo", help="serve, fire order-select for demo patients, print the cards")
    demo.add_argument("--port", type=_number(1, 65535, "CDS_PORT"), default=env("CDS_PORT", "8765"))
    demo.add_argument(
        "--fhir-port",
        type=_number(1, 65535, "CDS_DEMO_FHIR_PORT"),
        default=env("CDS_DEMO_FHIR_PORT", "8080"),
        help="port of the local FHIR server it starts",
    )
    demo.add_argument(
        "--fhir-base",
        help="use this FHIR R4 server (e.g. a HAPI server) instead of starting one; "
        "every hook is then sent without prefetch, so the service reads that server",
    )
    demo.add_argument("--no-seed", action="store_true", help="with --fhir-base: do not load the fixtures into it")
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
    token.add_argument(
        "--aud",
        required=True,
        help="the absolute URL of the endpoint called, e.g. http://127.0.0.1:8765/cds-services/spine-mri-order-select",
    )
    token.add_argument("--kid", help="key id (default: the key file's name without .pem)")
    token.add_argument("--alg", choices=["ES384", "RS384", "ES256", "RS256"], help="default: the key's own")
    token.add_argument("--lifetime", type=_number(1, 86400, None), default=300, help="seconds until exp (default 300)")
    token.set_defaults(func=cmd_token)

    seed = commands.add_parser("seed", help="load fixture Bundles into a FHIR R4 server (transaction, ids kept)")
    seed.add_argument("--fhir-base", required=True, help="the FHIR server's base URL")
    seed.add_argument("--token", help="a bearer token for the FHIR server")
    seed.add_argument(
        "--wait", type=_number(0, 3600, None), default=0, help="wait up to this many seconds for the server's /metadata"
    )
    seed.add_argument(
        "--keep-dates",
        action="store_true",
        help="do not move the fixtures' dates to today (they are written for 2026-11-22)",
    )
    seed.add_argument("files", nargs="*", help="transaction Bundle files (default: fixtures/patients/*.json)")
    seed.set_defaults(func=cmd_seed)

    report = commands.add_parser(
        "report",
        help="orders, verdicts, what happened to advised orders, shadow against live, clinicians compared, "
        "sites, trend, latency and data completeness, for utilization analysts (docs/utilization.md)",
    )
    report.add_argument("--db", help="an SQLite database file (default: CDS_DATABASE_URL, else CDS_FEEDBACK_DB)")
    report.add_argument("--since", type=_iso_date, help="first day, YYYY-MM-DD, UTC (default: 29 days before --until)")
    report.add_argument("--until", type=_iso_date, help="last day, YYYY-MM-DD, UTC (default: today)")
    report.add_argument(
        "--format",
        choices=["text", "csv", "json", "html", "orders-csv"],
        default="text",
        help="orders-csv: one row per order (default: text)",
    )
    report.add_argument("--out", help="write to this file instead of standard output (needed for html)")
    report.add_argument("--top", type=_number(1, 1000, None), default=10, help="clinicians listed (default 10)")
    report.add_argument("--region", help="only orders of this region (lumbar, cervical, thoracic, ...)")
    report.add_argument("--clinician", help="only orders of this userId")
    report.add_argument("--site", help="only orders of this site or department")
    report.add_argument("--mode", choices=["live", "shadow"], help="only orders rated in this mode")
    report.add_argument(
        "--min-orders",
        type=_number(1, 100000, None),
        default=10,
        help="no rate is shown for a clinician, site or month with fewer orders (default 10)",
    )
    report.add_argument(
        "--unsigned-after",
        type=_hours,
        metavar="HOURS",
        help="an advised order not signed within this counts as cancelled (default: CDS_UNSIGNED_AFTER_HOURS, 24)",
    )
    report.add_argument(
        "--departments", help="userId -> department, JSON or CSV (default: CDS_DEPARTMENTS_FILE)", metavar="FILE"
    )
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as error:
        print(f"cds-service {args.command}: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): say so once; stdout is closed, keep Python quiet at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"cds-service {args.command}: output closed early (broken pipe)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
