"""The command line as a new user runs it: seed, demo, evaluate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from cds_service.cli import main
from cds_service.processes import free_port
from cds_service.fhir_server import LocalFhirServer

ROOT = Path(__file__).resolve().parent.parent



def test_seed_loads_fixtures_keeping_ids(capsys):
    server = LocalFhirServer(free_port())
    base = server.start()
    try:
        patient = ROOT / "fixtures" / "patients" / "lbp-osteoporosis.json"
        assert main(["seed", "--fhir-base", base, str(patient)]) == 0
        out = capsys.readouterr().out
        assert "Patient/lbp-osteoporosis" in out and "seeded 1 of 1" in out
        assert requests.get(f"{base}/Patient/lbp-osteoporosis", timeout=5).json()["id"] == "lbp-osteoporosis"
    finally:
        server.stop()


def test_seed_reports_an_unreachable_server(capsys):
    assert main(["seed", "--fhir-base", f"http://127.0.0.1:{free_port()}/fhir",
                 str(ROOT / "fixtures" / "patients" / "lbp-osteoporosis.json")]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path):
    env = dict(os.environ, CDS_FEEDBACK_DB=str(tmp_path / "demo.sqlite3"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CDS_TRUSTED_ISSUERS", None)
    run = subprocess.run([sys.executable, "-m", "cds_service", "demo", "--no-wait", "--port", str(free_port()),
                          "--fhir-port", str(free_port()), "lbp-acute-simple", "lbp-cauda-reason-only"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "with full prefetch -> HTTP 200" in run.stdout
    assert "without prefetch (read from the FHIR server) -> HTTP 200" in run.stdout
    assert "PAMA rating: not-appropriate / low-value" in run.stdout
    assert "PAMA rating: appropriate / indicated-urgent" in run.stdout


def test_evaluate_prints_the_response(capsys):
    request = ROOT / "fixtures" / "hooks" / "neck-radic-acute.order-sign.json"
    assert main(["evaluate", str(request), "--as-of", "2026-11-22"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["systemActions"][0]["resource"]["extension"][0]["valueCodeableConcept"]["coding"][1]["code"] \
        == "low-value"


def test_evaluate_rejects_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["evaluate", str(bad), "--service", "spine-mri-order-select"]) == 2
    assert "hook" in capsys.readouterr().err
