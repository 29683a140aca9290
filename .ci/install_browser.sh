#!/usr/bin/env bash
# Chromium for the web-UI tests (tests/test_ui.py drives the Gradio app with Playwright). Playwright cannot download
# its own browser build on these machines, so the tests use Debian's chromium at /usr/bin/chromium.
# Idempotent: does nothing when a Chromium is already there. Needs root (apt-get) otherwise.
set -euo pipefail
if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: no apt-get here; install Chromium yourself (or set RESTOREKIT_CHROMIUM)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
/usr/bin/chromium --version
