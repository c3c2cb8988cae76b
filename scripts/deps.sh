#!/usr/bin/env bash
# Installs the Debian packages uvcluster needs, only when something is missing.
# Idempotent and quick when everything is present: `apt-get update` runs only before an install.
set -euo pipefail
packages=(
  build-essential cmake pkg-config ccache
  libuv1-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libhttp-parser-dev
  nodejs wrk nginx-light strace
  python3-pytest python3-matplotlib python3-numpy python3-scipy python3-jsonschema
  clang libclang-rt-14-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# /usr/bin/node may come from a non-Debian install; accept any working node.
if [[ " ${missing[*]} " == *" nodejs "* ]] && command -v node >/dev/null; then
  missing=("${missing[@]/nodejs}")
fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))
if ((${#missing[@]})); then
  echo "deps.sh: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
