#!/usr/bin/env bash
# Puts promtool in the folder given (default .tools/bin) for the alert rules' unit tests
# (tests/infra/test_observability.py), taken from Debian's prometheus package without
# installing it: no service is registered or started, nothing outside the folder changes.
# Where there is no apt (or no mirror), it says so and the test is skipped, visibly.
set -euo pipefail
dest=$(realpath -m "${1:-.tools/bin}")
[ -x "$dest/promtool" ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "tools: no apt-get here; the promtool test will be skipped" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
download() { apt-get download prometheus >/dev/null 2>&1; }
if ! download && ! { apt-get update -qq >/dev/null 2>&1 && download; }; then
  echo "tools: could not download Debian's prometheus package; the promtool test will be skipped" >&2
  exit 0
fi
dpkg -x prometheus_*.deb root
install -D root/usr/bin/promtool "$dest/promtool"
echo "tools: $("$dest/promtool" --version 2>&1 | head -n1)"
