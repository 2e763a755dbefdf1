"""Inputs the command line must answer in one line, never a traceback (issue 18, items 9 and 12)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
REQUEST = ROOT / "fixtures" / "hooks" / "lbp-acute-simple.order-select.json"


def _order_nested(depth: int) -> bytes:
    """The fixture request whose MRI order carries an extension nested `depth` levels."""
    body = json.loads(REQUEST.read_text())
    nested: dict = {"url": "x"}
    for _ in range(depth):
        nested = {"url": "x", "extension": [nested]}
    body["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = [nested]
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\xff\xfe{\x00}\x00", "not UTF-8"),  # UTF-16, as some Windows editors save
        (REQUEST.read_bytes().replace(b'"order-select"', b'"order-s\xe9lect"', 1), "not UTF-8"),  # Latin-1
        (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
        (
            b'{"hook": "order-select", "context": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
            "nests JSON too deeply",
        ),
        (_order_nested(400), "nests JSON too deeply"),  # parses, then nests deeper than the checks walk
    ],
    ids=["utf-16", "latin-1", "deep-array", "deep-object", "deep-order"],
)
def test_evaluate_answers_bad_bytes_and_deep_json_in_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "request.json"
    path.write_bytes(content)
    assert main(["evaluate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert needle in captured.err and captured.err.count("\n") == 1, captured.err[:500]


def test_evaluate_on_deep_json_is_one_line_in_a_real_process(tmp_path):
    """In its own process, as a user runs it: no traceback on stderr, exit 2."""
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    run = subprocess.run(
        [sys.executable, "-m", "cds_service", "evaluate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr[-2000:]


def test_serve_help_explains_each_option_with_its_default_and_authentication(capsys, monkeypatch):
    for name in ("CDS_HOST", "CDS_PORT", "CDS_WORKERS", "CDS_THREADS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    options = text.split("options:", 1)[1]
    for option, default, setting in (
        ("--host", "127.0.0.1", "CDS_HOST"),
        ("--port", "8765", "CDS_PORT"),
        ("--workers", "4", "CDS_WORKERS"),
        ("--threads", "2", "CDS_THREADS"),
    ):
        described = options.split(f"{option} ", 1)[1].split(" --")[0]  # the option's own help
        assert f"default {default}" in described and setting in described, (option, described)
    # before the first call: authentication set up, or explicitly off for a local trial
    assert "CDS_TRUSTED_ISSUERS" in text and "CDS_ALLOW_UNAUTHENTICATED=1" in text
    assert "CDS_PUBLIC_BASE_URL" in text
