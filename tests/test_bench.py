"""The benchmark's own helpers: the padded request body, wrk's result line, and the wrk script's
single use of each token. No timing is asserted here; bench/bench.py measures."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from bench_modules import load_bench

from cds_service.hooks.evaluation import evaluate_hook

ROOT = Path(__file__).resolve().parent.parent


bench = load_bench("bench")


def verdicts(body: dict, mappings) -> list[str]:
    result = evaluate_hook("spine-mri-order-select", json.loads(json.dumps(body)), mappings)
    return [evaluation.verdict for evaluation in result.evaluations]


@pytest.mark.parametrize("size", [50, 1000])
def test_padded_request_has_the_size_asked_and_the_same_verdict(size, mappings):
    unpadded = bench.fixtures.hook_request(bench.BASE_PATIENT, "order-select")
    padded = bench.request_with_size(size)
    assert bench.count_resources(unpadded["prefetch"]) < 50
    assert bench.count_resources(padded["prefetch"]) == size
    # The filler matches nothing: the clinical answer is the unpadded patient's.
    assert verdicts(padded, mappings) == verdicts(unpadded, mappings)


WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:40000/cds-services/spine-mri-order-select
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.62ms   11.13ms 102.73ms   71.38%
  5000 requests in 8.00s, 1.02MB read
  Non-2xx or 3xx responses: 3
BENCH-RESULT {RESULT}
Requests/sec:    625.00
""".replace(
    "{RESULT}",
    json.dumps(
        {
            "requests": 5000,
            "duration_us": 8000000,
            "bytes": 1069000,
            "errors": {"connect": 0, "read": 1, "write": 0, "status": 3, "timeout": 0},
            "latency_us": {"p50": 20100, "p90": 35000, "p99": 61250, "max": 102730, "mean": 21620.5},
            "threads_out_of_tokens": 1,
        }
    ),
)


def test_wrk_result_line_is_parsed():
    result = bench.parse_wrk_output(WRK_OUTPUT)
    assert result["requests"] == 5000
    assert result["throughput"] == pytest.approx(625.0)
    assert result["p50_ms"] == pytest.approx(20.1)
    assert result["p99_ms"] == pytest.approx(61.25)
    assert result["errors"] == 4  # a read error and three non-2xx answers
    assert result["out_of_tokens"] is True


def test_wrk_output_without_result_line_is_an_error_that_shows_it():
    with pytest.raises(RuntimeError, match="Usage: wrk"):
        bench.parse_wrk_output("Usage: wrk <options> <url>\n")


def test_growth_exponent_is_one_for_linear_latency():
    def summary(p50):
        return {"hook": [{"p50_ms": p50}]}

    lines = bench.growth_lines([(100, summary(10.0)), (1000, summary(100.0)), (10000, summary(316.2))])
    assert "exponent 1.00" in lines[0]
    assert "exponent 0.50" in lines[1]


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn: wrk keeps its connections
    seen: ClassVar[list[tuple[str, bytes]]] = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.seen.append((self.headers.get("Authorization", ""), body))
        reply = b'{"cards": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # wrk closes its connections mid-request when it stops


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_wrk_script_posts_the_body_and_uses_each_token_once(tmp_path):
    server = QuietServer(("127.0.0.1", 0), Recorder)
    Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = b'{"hook": "order-select", "x": [1, 2, 3]}'
        (tmp_path / "body.json").write_bytes(body)
        tokens = {1: [f"t1-{i}" for i in range(40)], 2: [f"t2-{i}" for i in range(40)]}
        for thread_id, lines in tokens.items():
            (tmp_path / f"tokens.{thread_id}").write_text("\n".join(lines) + "\n")
        url = f"http://127.0.0.1:{server.server_address[1]}/cds-services/spine-mri-order-select"
        finished = subprocess.run(
            [
                "wrk",
                "-t2",
                "-c2",
                "-d2s",
                "-s",
                str(bench.WRK_SCRIPT),
                url,
                "--",
                str(tmp_path / "body.json"),
                str(tmp_path / "tokens"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        result = bench.parse_wrk_output(finished.stdout)
    finally:
        server.shutdown()
        server.server_close()
    used = [authorization.removeprefix("Bearer ") for authorization, _ in Recorder.seen]
    assert {sent for _, sent in Recorder.seen} == {body}
    real_tokens = [token for token in used if token != "exhausted"]
    assert len(real_tokens) == len(set(real_tokens))  # no token twice
    assert set(real_tokens) <= set(tokens[1]) | set(tokens[2])
    # wrk calls request() once before the run to check the script, which takes thread 1's first token
    assert len(real_tokens) >= 80 - 1
    assert result["out_of_tokens"] is True


def test_bare_app_parses_the_body_and_answers_empty_cards():
    bare = load_bench("bare_app").app.test_client()
    assert bare.post(
        "/cds-services/spine-mri-order-select", data=b'{"hook": "order-select"}', content_type="application/json"
    ).get_json() == {"cards": []}
    assert (
        bare.post(
            "/cds-services/spine-mri-order-select", data=b"{not json", content_type="application/json"
        ).status_code
        == 500
    )


def test_instruction_count_is_read_from_valgrind_output():
    instructions = load_bench("instructions")
    output = (
        "==2206== Events    : Ir\n==2206== Collected : 328,314,011\n==2206==\n==2206== I   refs:      328,314,011\n"
    )
    assert instructions.parse_collected(output) == 328_314_011
    with pytest.raises(RuntimeError, match="no count"):
        instructions.parse_collected("valgrind: command not found")
