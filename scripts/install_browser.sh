#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the viewer's browser tests (tests/test_viewer.py).
# Installed with apt-get when running as root (as CI does); otherwise those tests skip, naming the packages.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "browser tests will be skipped: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing chromium and chromium-driver for the browser tests ..."
apt-get install -y -q chromium chromium-driver >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
  || echo "apt-get could not install chromium chromium-driver: the browser tests will be skipped"
exit 0
