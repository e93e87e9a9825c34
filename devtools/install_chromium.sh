#!/usr/bin/env bash
# Debian's chromium, for the jobs page's headless-browser test. Playwright drives
# it; its own browser download cannot be used, as the tests run without internet.
# Says why when it cannot install it; the test then skips with that reason.
set -euo pipefail
if command -v chromium >/dev/null; then
    echo "chromium is installed: $(command -v chromium)"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "cannot install Debian's chromium here: it needs root and apt-get (install the package chromium by hand)"
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium
echo "chromium installed: $(command -v chromium)"
