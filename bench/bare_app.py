"""The benchmark's baseline: a minimal Flask app that reads and parses the hook's JSON body the
way the service does and answers empty cards, and does nothing else (no schema check, no facts,
no store, no log line, no CORS).

bench.py serves it with gunicorn on the service's own worker settings (gthread, same workers and
threads), so hook/bare measures what the clinical path costs on top of HTTP + JSON. When app.py
changes how it reads a body or writes a response (e.g. another JSON library), change `parse` and
`answer` here the same way, or the ratio compares two different parsers.

    .venv/bin/python -m gunicorn --chdir bench --worker-class gthread --workers 2 --threads 8 bare_app:app
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

from cds_service.cli.main import tune_gc_for_serving

app = Flask(__name__)
tune_gc_for_serving()  # the runtime settings `cds-service serve` gives its workers: only the work differs


def parse(raw: bytes):
    return orjson.loads(raw)  # as app.py's read_json


def answer(body) -> Response:
    return Response(orjson.dumps(body), mimetype="application/json")  # as app.py's _json


@app.post("/cds-services/<service_id>")
def hook(service_id: str):
    parse(request.get_data(cache=False))
    return answer({"cards": []})


@app.get("/healthz")
def healthz():
    return answer({"status": "ok", "app": "bare"})
