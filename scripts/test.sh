#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, checks the code (ruff lint and
# format, mypy), then runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/system-packages.sh
code=(cds_service tests bench fixtures)
.venv/bin/ruff check --quiet "${code[@]}" || { echo "test.sh: ruff check failed (.venv/bin/ruff check --fix fixes some)" >&2; exit 1; }
.venv/bin/ruff format --check --quiet "${code[@]}" || { echo "test.sh: code not formatted (run .venv/bin/ruff format ${code[*]})" >&2; exit 1; }
.venv/bin/mypy || { echo "test.sh: mypy found type errors" >&2; exit 1; }
exec .venv/bin/python -m pytest "$@"
