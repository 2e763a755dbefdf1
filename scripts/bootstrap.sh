#!/usr/bin/env bash
# Create .venv (the service and its test tools) and .venv-fhir (the local FHIR server).
# A complete environment is reused without touching the package index, so the scripts run
# on an offline hospital network once installed: .venv is (re)installed only when it is
# missing, cannot import the service, or pyproject.toml changed since it was installed.
# A failed install ends in one line saying what could not be had; pip's own output stays in
# <venv>/pip-install.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(--quiet --disable-pip-version-check)

make_venv() {  # $1: where
    python3 -m venv "$1" >/dev/null 2>&1 || python3 -m venv "$1" 2>&1 | tail -n 1 | {
        read -r said || true
        echo "bootstrap: python3 cannot create the virtual environment $1 (${said:-no reason given}); on Debian:" \
             "apt-get install python3-venv" >&2
        exit 1
    }
}

pip_install() {  # $1: the virtual environment; then pip's arguments
    local venv="$1" log="$1/pip-install.log"
    shift
    if "$venv/bin/python" -m pip install "${PIP[@]}" "$@" >"$log" 2>&1; then
        return 0
    fi
    local missing index why=""
    missing="$(sed -n 's/.*Could not find a version that satisfies the requirement \([^ ]*\).*/\1/p' "$log" | head -n 1)"
    index="$(sed -n 's/.*Looking in indexes: \([^ ,]*\).*/\1/p' "$log" | head -n 1)"
    index="${index:-${PIP_INDEX_URL:-https://pypi.org/simple}}"
    if grep -qiE 'connection refused|failed to establish|name resolution|network is unreachable|timed out|no matching distribution' "$log"; then
        why=" (offline? the first install needs the package index once)"
    fi
    echo "bootstrap: could not install into $venv: ${missing:-a package} is not installed and the package index" \
         "${index} did not provide it${why}; pip's output: $log" >&2
    exit 1
}

stamp=.venv/.installed-pyproject.sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
   && .venv/bin/python -c 'import cds_service.cli.main' 2>/dev/null; then
    :
else
    echo "bootstrap: installing the service and its test tools into .venv (needs the package index once)" >&2
    [ -x .venv/bin/python ] || make_venv .venv
    pip_install .venv -e '.[test]'
    echo "$want" > "$stamp"
fi
# The FHIR server the integration tests and the demo run (sekmet-fhir, a FastAPI + SQLite
# FHIR R4 server), in its own environment so its dependencies never mix with ours.
if [ ! -x .venv-fhir/bin/sekmet ]; then
    echo "bootstrap: installing the local FHIR server into .venv-fhir" >&2
    [ -x .venv-fhir/bin/python ] || make_venv .venv-fhir
    pip_install .venv-fhir 'sekmet-fhir==0.1.1'
fi
