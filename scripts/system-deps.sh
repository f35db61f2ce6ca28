#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Chromium (UI test, driven by Playwright)
# and docker-compose (validates docker-compose.yaml without an engine). Installs them with apt
# when missing and running as root; otherwise says what to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Install these system packages first: ${missing[*]}" >&2
  exit 1
fi
