#!/usr/bin/env bash
# Print the path of a headless-capable chromium, installing Debian's package
# first when none is present (the report test calls this; CI runs as root on
# Debian). Fails loudly, never silently: exit 1 with the reason on stderr.
set -euo pipefail
find_browser() {
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    done
    return 1
}
if find_browser; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no chromium and no apt-get: install a chromium yourself" >&2; exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "no chromium, and not root to apt-get install it" >&2; exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
{ $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium; } >&2 \
    || { echo "apt-get install chromium failed" >&2; exit 1; }
find_browser || { echo "chromium installed but not on PATH" >&2; exit 1; }
