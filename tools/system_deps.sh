#!/usr/bin/env bash
# Installs, with apt, the programs the test suite drives that pip cannot
# bring: Node.js and npm (oidc-provider, the interop tests' identity
# provider), Debian's Chromium (the browser tests, driven by Playwright),
# h2load and curl (HTTP/2 clients), and systemd-analyze, useradd, setpriv,
# runuser and Debian's python3 with venv (tests/test_install.py).  Installs
# only what is missing; `make test` runs it first.  Without root or apt it
# names what is missing and stops.
set -euo pipefail

missing=()
need() {  # need PACKAGE PROGRAM...
  local package=$1 program
  shift
  for program in "$@"; do
    if ! command -v "$program" >/dev/null 2>&1 && ! test -x "/usr/sbin/$program" \
        && ! test -x "/usr/bin/$program"; then
      missing+=("$package")
      return
    fi
  done
}
need nodejs node
need npm npm
need chromium chromium
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
# tests/test_install.py makes the units' virtualenv with Debian's own python3.
if command -v dpkg >/dev/null 2>&1; then
  dpkg -s python3-venv >/dev/null 2>&1 || missing+=(python3-venv)
fi
need nghttp2-client h2load
need curl curl
need systemd systemd-analyze
need passwd useradd
need util-linux setpriv runuser

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "The tests need these Debian packages: ${missing[*]}" >&2
  echo "Install them (as root: apt-get install ${missing[*]}), then run make test again." >&2
  exit 1
fi
echo "Installing with apt: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
