#!/bin/sh
# Make sure Debian's chromium is there for tests/course/test_browser.py; a no-op when it already is.
# Installs it with apt only when /usr/bin/chromium is missing AND we are root with apt-get available
# (CI machines); anywhere else (a laptop without root) it prints why it did nothing and exits 0, and
# the browser test then skips with the same reason. Never a browser download from the web.
set -eu

if [ -x /usr/bin/chromium ] || [ -n "${LORA101_CHROMIUM:-}" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: /usr/bin/chromium is missing and apt-get is not usable here (needs root on Debian/Ubuntu);" \
         "the browser test will skip. Install it with: sudo apt-get install chromium" >&2
    exit 0
fi
echo "ensure_chromium: installing Debian's chromium with apt-get (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
