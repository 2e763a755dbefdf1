#!/usr/bin/env bash
# Start the service on the demo fixtures, show it rating orders, and leave it running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/cds-service demo "$@"
