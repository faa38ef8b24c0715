#!/usr/bin/env bash
# Puts promtool in the folder given (default .tools/bin) for the alert rules' unit tests
# (tests/infra/test_observability.py), taken from Debian's prometheus package without
# installing it: no service is registered or started (apt's package lists may be refreshed
# when the package is not found). Where there is no apt or no mirror, it says so once, leaves
# a marker so later runs do not try again (`rm -r .tools` to retry), and the test is skipped.
set -euo pipefail
mkdir -p "${1:-.tools/bin}"
dest=$(cd "${1:-.tools/bin}" && pwd)
[ -x "$dest/promtool" ] && exit 0
[ -e "$dest/.promtool-unavailable" ] && exit 0
unavailable() {
  echo "tools: $1; the promtool test will be skipped" >&2
  touch "$dest/.promtool-unavailable"
  exit 0
}
command -v apt-get >/dev/null || unavailable "no apt-get here"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
download() { apt-get download prometheus >/dev/null 2>&1; }
if ! download && ! { apt-get update -qq >/dev/null 2>&1 && download; }; then
  unavailable "could not download Debian's prometheus package"
fi
dpkg -x prometheus_*.deb root
install -D root/usr/bin/promtool "$dest/promtool"
echo "tools: $("$dest/promtool" --version 2>&1 | head -n1)"
