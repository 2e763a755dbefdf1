#!/usr/bin/env bash
# Create .venv (the service and its test tools) and .venv-fhir (the local FHIR server).
# A complete environment is reused without touching the package index, so the scripts run
# on an offline hospital network once installed: .venv is (re)installed only when it is
# missing, cannot import the service, or pyproject.toml changed since it was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(--quiet --disable-pip-version-check)
stamp=.venv/.installed-pyproject.sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
   && .venv/bin/python -c 'import cds_service.cli.main' 2>/dev/null; then
    :
else
    echo "bootstrap: installing the service and its test tools into .venv (needs the package index once)" >&2
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install "${PIP[@]}" -e '.[test]'
    echo "$want" > "$stamp"
fi
# The FHIR server the integration tests and the demo run (sekmet-fhir, a FastAPI + SQLite
# FHIR R4 server), in its own environment so its dependencies never mix with ours.
if [ ! -x .venv-fhir/bin/sekmet ]; then
    echo "bootstrap: installing the local FHIR server into .venv-fhir" >&2
    python3 -m venv .venv-fhir
    .venv-fhir/bin/python -m pip install "${PIP[@]}" 'sekmet-fhir==0.1.1'
fi
