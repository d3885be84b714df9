#!/usr/bin/env bash
# The HTML report's test drives a real headless browser: install Debian's chromium where it is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core
else
  echo "ensure-chromium: no apt-get here; install chromium yourself (the HTML report test is skipped without it)" >&2
fi
