#!/usr/bin/env bash
# Create .venv and install the service with its test tools (idempotent; a fresh machine needs only python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The FHIR server the integration tests and the demo run (sekmet-fhir, a FastAPI + SQLite
# FHIR R4 server), in its own environment so its dependencies never mix with ours.
if [ ! -x .venv-fhir/bin/sekmet ]; then
    python3 -m venv .venv-fhir
    .venv-fhir/bin/python -m pip install --quiet --disable-pip-version-check 'sekmet-fhir==0.1.1'
fi
