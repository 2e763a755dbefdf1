"""The command line as a new user runs it: seed, demo, evaluate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cds_service.cli import fixtures
from cds_service.cli.local_fhir import LocalFhirServer
from cds_service.cli.main import main
from cds_service.cli.processes import free_port

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


def test_seed_checks_the_server_once_before_sending_anything(capsys):
    patient = str(ROOT / "fixtures" / "patients" / "lbp-osteoporosis.json")
    assert main(["seed", "--fhir-base", f"http://127.0.0.1:{free_port()}/fhir", patient]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be reached" in err and "FAILED" not in err
    assert main(["seed", "--fhir-base", "localhost:8080/fhir", patient]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "http(s) URL" in err


def test_demo_runs_end_to_end(tmp_path):
    env = dict(
        os.environ,
        CDS_FEEDBACK_DB=str(tmp_path / "demo.sqlite3"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    env.pop("CDS_TRUSTED_ISSUERS", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds_service",
            "demo",
            "--no-wait",
            "--port",
            str(free_port()),
            "--fhir-port",
            str(free_port()),
            "lbp-acute-simple",
            "lbp-cauda-reason-only",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "with full prefetch -> HTTP 200" in run.stdout
    assert "without prefetch: the service read the FHIR server -> HTTP 200" in run.stdout
    assert "PAMA rating: not-appropriate (low-value)" in run.stdout
    assert "PAMA rating: appropriate (indicated-urgent)" in run.stdout
    # cards on the terminal, the service's JSON log lines in its log file
    assert '"level"' not in run.stdout + run.stderr
    log_text = (tmp_path / "var" / "demo" / "service.log").read_text()
    assert "Logging error" not in log_text
    answers = [json.loads(line) for line in log_text.splitlines() if line.startswith("{") and '"answer"' in line]
    assert any(entry.get("verdicts") for entry in answers if entry["event"] == "answer")


def test_evaluate_prints_the_response(capsys):
    request = ROOT / "fixtures" / "hooks" / "neck-radic-acute.order-sign.json"
    assert main(["evaluate", str(request), "--as-of", "2026-11-22"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert (
        response["systemActions"][0]["resource"]["extension"][0]["valueCodeableConcept"]["coding"][1]["code"]
        == "low-value"
    )


def test_evaluate_rejects_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["evaluate", str(bad), "--service", "spine-mri-order-select"]) == 2
    assert "hook" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,needle",
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('{"context": {}}', "'hook' is missing"),
        ('{"hook": "patient-view"}', "no service answers hook 'patient-view'"),
        ("{not json", "is not JSON"),
    ],
)
def test_evaluate_explains_a_file_that_is_not_a_hook_request(tmp_path, capsys, content, needle):
    path = tmp_path / "request.json"
    path.write_text(content)
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def one_line_exit(argv, capsys, env=None, monkeypatch=None) -> str:
    """Run the command line expecting argparse's own refusal: exit 2 and a single line."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_bad_as_of_and_bad_numeric_settings_are_one_line(capsys, monkeypatch):
    request = str(ROOT / "fixtures" / "hooks" / "lbp-acute-simple.order-select.json")
    assert "YYYY-MM-DD" in one_line_exit(["evaluate", request, "--as-of", "22/11/2026"], capsys)
    assert "CDS_PORT" in one_line_exit(["serve"], capsys, {"CDS_PORT": "eighty"}, monkeypatch)
    monkeypatch.delenv("CDS_PORT")
    assert "CDS_WORKERS" in one_line_exit(["serve"], capsys, {"CDS_WORKERS": "two"}, monkeypatch)
    assert "65535" in one_line_exit(["demo", "--port", "70000"], capsys)


def test_token_refuses_a_key_that_is_not_pem_or_does_not_fit_the_algorithm(tmp_path, capsys):
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("not a key")
    assert main(["token", "--issuer", "x", "--key", str(not_pem), "--aud", "http://a/b"]) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    assert main(["keygen", "--issuer", "x", "--out", str(tmp_path), "--kid", "ec", "--alg", "ES384"]) == 0
    capsys.readouterr()
    assert (
        main(["token", "--issuer", "x", "--key", str(tmp_path / "ec.pem"), "--aud", "http://a/b", "--alg", "RS384"])
        == 2
    )
    err = capsys.readouterr().err
    assert "--alg ES384" in err and err.count("\n") == 1
    assert main(["token", "--issuer", "x", "--key", str(tmp_path / "ec.pem"), "--aud", "http://a/b"]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWT, signed with the key's own algorithm


def run_cli(args, env=None, cwd=ROOT, timeout=60, **kwargs):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "cds_service", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def _bad_mappings(tmp: Path, kind: str) -> Path:
    target = tmp / kind
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("kind: concepts\n")
    elif kind == "broken-yaml":
        target.mkdir()
        (target / "red_flags.yaml").write_text("kind: [concepts\n")
    elif kind == "no-cauda-equina":
        shutil.copytree(ROOT / "mappings", target)
        text = (target / "red_flags.yaml").read_text()
        (target / "red_flags.yaml").write_text(text.replace("id: cauda_equina", "id: renamed_cauda_equina"))
    elif kind == "wrong-shape":
        shutil.copytree(ROOT / "mappings", target)
        (target / "episode.yaml").write_text("kind: concepts\nconcepts: [{label: no id}]\n")
    elif kind == "unread-concept":
        shutil.copytree(ROOT / "mappings", target)
        text = (target / "red_flags.yaml").read_text()
        made_up = (
            "- id: made_up_flag\n  kind: cancer\n  label: Made up flag\n  guidelines: [ACP_APS_2007]\n  codes:\n"
            "  - {system: icd10cm, code: R63.4, display: Abnormal weight loss, confidence: verified-authoritative,"
            " source: ICD10CM_FY2026}\n"
        )
        (target / "red_flags.yaml").write_text(text.replace("- id: weight_loss\n", made_up + "- id: weight_loss\n", 1))
    elif kind == "kind-conflict":
        shutil.copytree(ROOT / "mappings", target)
        text = (target / "red_flags.yaml").read_text()
        (target / "red_flags.yaml").write_text(
            text.replace("    code: G83.4\n", "    code: C79.51\n", 1)  # a cancer code under cauda equina
        )
    return target


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("missing", "does not exist"),
        ("empty", "holds no mapping files"),
        ("file", "is a file"),
        ("broken-yaml", "not valid YAML"),
        ("wrong-shape", "'id' is a required property"),
        ("no-cauda-equina", "concept 'cauda_equina'"),
        ("unread-concept", "made_up_flag: read by no rule"),
        ("kind-conflict", "C79.51 is filed under cauda_equina (neurological) and cancer (cancer)"),
    ],
)
def test_a_bad_mappings_folder_stops_serve_evaluate_and_demo_in_one_line(tmp_path, kind, needle):
    directory = _bad_mappings(tmp_path, kind)
    env = {"CDS_MAPPINGS_DIR": str(directory), "CDS_ALLOW_UNAUTHENTICATED": "1"}
    request = str(ROOT / "fixtures" / "hooks" / "lbp-cauda-equina.order-select.json")
    for args in (
        ["serve", "--port", str(free_port())],
        ["evaluate", request],
        ["demo", "--no-wait", "--port", str(free_port()), "--fhir-port", str(free_port())],
    ):
        run = run_cli(args, env, cwd=tmp_path)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert needle in run.stderr and str(directory) in run.stderr
        assert "Traceback" not in run.stderr and run.stderr.strip().count("\n") == 0, run.stderr
    # validate-mappings runs the same checks: it never says "all files valid" where serve refuses
    run = run_cli(["validate-mappings", "--dir", str(directory)], cwd=tmp_path)
    assert run.returncode == 1 and needle in run.stderr and "all files valid" not in run.stdout


def test_healthz_reports_the_mappings_version(client, mappings):
    assert client.get("/healthz").get_json()["mappings_version"] == mappings.version
    assert len(mappings.version) == 12


def test_a_port_in_use_is_named_with_how_to_choose_another(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_cli(["serve", "--port", str(port)], {"CDS_ALLOW_UNAUTHENTICATED": "1"})
        assert run.returncode == 2 and f"port {port}" in run.stderr and "--port" in run.stderr
        # a second demo on busy ports says so before seeding or starting anything
        run = run_cli(["demo", "--no-wait", "--port", str(free_port()), "--fhir-port", str(port)], cwd=tmp_path)
        assert run.returncode == 2 and f"port {port}" in run.stderr and "--fhir-port" in run.stderr
        assert "seeded" not in run.stdout and "Traceback" not in run.stderr


def test_demo_refuses_an_unknown_patient_before_starting_anything(tmp_path):
    run = run_cli(
        ["demo", "--no-wait", "--port", str(free_port()), "--fhir-port", str(free_port()), "no-such-patient"],
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "unknown fixture patient 'no-such-patient'" in run.stderr
    assert "starting" not in run.stdout


def test_a_closed_pipe_is_one_line_not_a_traceback():
    request = str(ROOT / "fixtures" / "hooks" / "lbp-osteoporosis.order-select.json")
    reader = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    reader.wait(timeout=10)  # the pipe's only reader is gone: every write to it fails
    run = subprocess.run(
        [sys.executable, "-m", "cds_service", "evaluate", request, "--as-of", "2026-11-22"],
        cwd=ROOT,
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    reader.stdin.close()
    assert run.returncode == 1 and "broken pipe" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1


def test_validate_mappings_on_a_missing_folder_or_a_file(tmp_path, capsys):
    assert main(["validate-mappings", "--dir", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    file = tmp_path / "red_flags.yaml"
    file.write_text("kind: concepts\n")
    assert main(["validate-mappings", "--dir", str(file)]) == 1
    assert "is a file" in capsys.readouterr().err


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_stopping_the_demo_by_any_signal_stops_its_fhir_server_and_service(tmp_path, stop):
    port, fhir_port = free_port(), free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cds_service",
            "demo",
            "--port",
            str(port),
            "--fhir-port",
            str(fhir_port),
            "lbp-acute-simple",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        for line in demo.stdout:
            if "Ctrl-C stops" in line:
                break
        assert _listening(port) and _listening(fhir_port)
        demo.send_signal(stop)
        demo.wait(timeout=30)
        deadline = time.monotonic() + 60  # a wait, not a bound: it ends as soon as both ports close
        while (_listening(port) or _listening(fhir_port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(port) and not _listening(fhir_port)
    finally:
        if demo.poll() is None:
            demo.kill()


def test_demo_against_an_existing_fhir_server_reads_it_without_prefetch(tmp_path):
    server = LocalFhirServer(free_port())  # stands in for a HAPI server the user points at
    base = server.start()
    try:
        run = run_cli(
            [
                "demo",
                "--no-wait",
                "--port",
                str(free_port()),
                "--fhir-base",
                base + "/",
                "lbp-weight-loss",
                "lbp-cauda-reason-only",
            ],
            cwd=tmp_path,
            timeout=180,
            env={"PYTHONPATH": str(ROOT)},
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"seeded {len(fixtures.manifest())} fixture patients into {base}" in run.stdout
        assert run.stdout.count("without prefetch: the service read the FHIR server -> HTTP 200") == 2
        assert "PAMA rating: no-criteria-apply (radiographs-first)" in run.stdout
        assert requests.get(f"{base}/Patient/lbp-weight-loss", timeout=5).ok
    finally:
        server.stop()


def _serve_once(tmp_path: Path) -> list[dict]:
    """Start `serve` on a fresh port, wait until it answers, stop it; its stderr lines, parsed."""
    from cds_service.cli.processes import stop_process, wait_for_http

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(CDS_ALLOW_UNAUTHENTICATED="1", CDS_FEEDBACK_DB=str(tmp_path / "db.sqlite3"))
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service", "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/healthz", process, seconds=60)
    finally:
        stop_process(process)
    lines = process.stderr.read().splitlines()
    return [json.loads(line) for line in lines]  # every line is one JSON object (fails otherwise)


def test_serve_logs_are_json_and_quiet_on_a_database_already_migrated(tmp_path):
    first = _serve_once(tmp_path)
    assert [e for e in first if e.get("event") == "database-migration"] != []
    assert any(e["logger"] == "gunicorn.error" and e["message"].startswith("Booting worker") for e in first)
    # authentication off is said once, by the master, not once per worker
    assert sum("AUTHENTICATION IS OFF" in e.get("warning", "") for e in first) == 1
    second = _serve_once(tmp_path)
    assert [e for e in second if e.get("event") == "database-migration"] == []
    assert [e for e in second if e["logger"].startswith("alembic")] == []
    assert {e["level"] for e in second} <= {"INFO", "WARNING"}
