#!/bin/sh
# Installs the Debian packages ledgerd needs to build, test and benchmark.
# Idempotent: does nothing (no apt-get at all) when every package is present.
set -eu
PKGS="build-essential cmake pkg-config clang libclang-rt-14-dev \
libhttp-parser-dev liburing-dev libcjson-dev libyajl-dev libxxhash-dev libsodium-dev libssl-dev openssl \
python3 curl wrk procps"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
