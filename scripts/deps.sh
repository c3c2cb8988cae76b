#!/usr/bin/env bash
# Installs the Debian packages uvcluster needs, only when something is missing.
# Idempotent and quick when everything is present: `apt-get update` runs only before an install.
set -euo pipefail
packages=(
  build-essential cmake pkg-config ccache
  libuv1-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libhttp-parser-dev
  nodejs wrk nginx-light strace valgrind
  python3-pytest python3-matplotlib python3-numpy python3-scipy python3-jsonschema
  clang libclang-rt-14-dev
  libcli11-dev prometheus-cpp-dev curl python3-prometheus-client
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

# npm packages (pm2 for the fault lab, socket.io for the sticky-session lab): `npm ci` from the
# committed package-lock.json into ./node_modules (project-local, never global), only when
# node_modules is missing or older than the lockfile.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$root/package-lock.json" ]; then
  installed="$root/node_modules/.package-lock.json"
  if [ ! -f "$installed" ] || [ "$root/package-lock.json" -nt "$installed" ]; then
    # Not fatal: without the registry the build and tests still work; the fault lab then
    # records pm2 as unavailable.
    if ! command -v npm >/dev/null; then
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null; } ||
        echo "deps.sh: could not install npm" >&2
    fi
    echo "deps.sh: npm ci (node_modules missing or older than package-lock.json)" >&2
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
      echo "deps.sh: npm ci failed: pm2 and socket.io are unavailable" >&2
  fi
fi
