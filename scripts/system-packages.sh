#!/usr/bin/env bash
# Debian packages the test suite runs for real (never mocked): PostgreSQL (the shared store),
# Chromium (the dashboard, in headless Playwright) and nginx (the slow-client front).
# Installs only what is missing; needs root (or sudo) and Debian's package index the first time.
# When another apt or dpkg holds the dpkg lock (an unattended upgrade, another install), apt waits
# for it up to CDS_APT_LOCK_TIMEOUT seconds (default 300) instead of failing at once.
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
wait_seconds="${CDS_APT_LOCK_TIMEOUT:-300}"
echo "system-packages: installing ${missing[*]} (Debian apt; if another apt or dpkg holds the dpkg lock," \
     "waits up to ${wait_seconds} s for it to be freed)" >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp "${TMPDIR:-/tmp}/system-packages.XXXXXX")"
trap 'rm -f "$log"' EXIT
apt_get() { "${sudo[@]}" apt-get -o "DPkg::Lock::Timeout=${wait_seconds}" "$@" >/dev/null 2>>"$log"; }
install() { apt_get install -y -q --no-install-recommends "${missing[@]}"; }
code=0
install || { apt_get update -q && install; } || code=$?
if [ "$code" != 0 ]; then
    said="$(grep '^E:' "$log" | tail -n 1 || true)"
    echo "system-packages: apt-get could not install ${missing[*]} (exit ${code}${said:+: ${said}}); install" \
         "them as root with apt-get, once the package index is reachable and no other apt holds the lock" >&2
    exit 1
fi
