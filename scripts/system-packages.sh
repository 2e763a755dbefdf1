#!/usr/bin/env bash
# Debian packages the test suite runs for real (never mocked): PostgreSQL (the shared store),
# Chromium (the dashboard, in headless Playwright) and nginx (the slow-client front).
# Installs only what is missing; needs root (or sudo) and Debian's package index the first time.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
        echo "system-packages: ${missing[*]} missing and not root: install them with apt-get (Debian)" >&2; exit 1
    fi
fi
echo "system-packages: installing ${missing[*]} (Debian apt)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
  || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
