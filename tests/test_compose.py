"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the code instead."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from cds_service.cli.main import build_parser
from cds_service.web.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTINGS_NAMES = {
    "CDS_TRUSTED_ISSUERS",
    "CDS_PUBLIC_BASE_URL",
    "CDS_FHIR_ALLOWED_SERVERS",
    "CDS_FHIR_BUDGET_SECONDS",
    "CDS_FEEDBACK_DB",
    "CDS_ALLOW_UNAUTHENTICATED",
    "CDS_MAPPINGS_DIR",
    "CDS_DATABASE_URL",
    "CDS_PATIENT_HASH_KEY",
    "CDS_MODE",
    "CDS_DASHBOARD_TOKEN",
}


def test_services_and_pinned_images():
    services = COMPOSE["services"]
    assert set(services) == {"hapi", "postgres", "cds", "proxy", "seeder"}
    for name, repository in (("hapi", "hapiproject/hapi:"), ("proxy", "nginx:"), ("postgres", "postgres:")):
        image = services[name]["image"]
        assert image.startswith(repository) and not image.endswith(":latest")


def test_only_the_proxy_publishes_the_service():
    """Slow clients stall gunicorn: clients reach the service through nginx only (deploy/nginx/)."""
    services = COMPOSE["services"]
    assert "ports" not in services["cds"]
    proxy = services["proxy"]
    assert "8765:8765" in proxy["ports"]
    environment = proxy["environment"]
    template = (ROOT / "deploy" / "nginx" / "cds.conf.template").read_text()
    assert set(re.findall(r"\$\{(CDS_[A-Z_]+)\}", template)) == set(environment)
    assert environment["CDS_PROXY_LISTEN"] == "8765" and environment["CDS_UPSTREAM"] == "cds:8765"
    assert int(environment["CDS_MAX_BODY_BYTES"]) == Settings.from_env().max_body_bytes
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in proxy["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"] == "./deploy/nginx/nginx.conf"
    assert mounts["/etc/nginx/templates/cds.conf.template"] == "./deploy/nginx/cds.conf.template"
    assert services["cds"]["environment"]["CDS_PUBLIC_BASE_URL"] == "http://localhost:8765"  # tokens name the proxy
    # nginx answers and forwards only the public host (issue 18, item 3), and its health check names it
    assert environment["CDS_PUBLIC_HOST"] == urlsplit(services["cds"]["environment"]["CDS_PUBLIC_BASE_URL"]).netloc
    assert f"Host: {environment['CDS_PUBLIC_HOST']}" in proxy["healthcheck"]["test"]


def test_ports_match_the_service_and_the_fhir_base():
    services = COMPOSE["services"]
    assert "8080:8080" in services["hapi"]["ports"]
    assert services["cds"]["environment"]["CDS_FHIR_ALLOWED_SERVERS"] == "http://hapi:8080/fhir"
    assert "http://hapi:8080/fhir" in services["seeder"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 8765" in dockerfile and '"--port", "8765"' in dockerfile


def test_environment_names_are_settings_the_code_reads(monkeypatch):
    environment = COMPOSE["services"]["cds"]["environment"]
    assert set(environment) <= SETTINGS_NAMES
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings.from_env()
    assert settings.fhir.allows("http://hapi:8080/fhir")
    assert settings.trusted_issuers == Path("/app/docs/trusted-issuers.sandbox.json")
    assert (ROOT / "docs" / "trusted-issuers.sandbox.json").exists()
    assert settings.authentication_problem() is None
    # the service's database is the compose PostgreSQL, with the driver the service installs
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    postgres = COMPOSE["services"]["postgres"]["environment"]
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres"
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert COMPOSE["services"]["cds"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_health_check_probes_healthz_and_seeder_command_parses():
    test = COMPOSE["services"]["cds"]["healthcheck"]["test"]
    assert any("/healthz" in part for part in test)
    args = build_parser().parse_args(COMPOSE["services"]["seeder"]["command"][1:])
    assert args.func.__name__ == "cmd_seed" and args.wait > 0
