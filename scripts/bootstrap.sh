#!/usr/bin/env bash
# Install what tierfs needs on Debian 12: apt packages, a virtualenv in .venv,
# and the package itself. `bootstrap.sh` installs the test toolchain too
# (servers, emulators, torch: what `make test` runs); `bootstrap.sh runtime`
# only what tierfs needs to run (what `make demo` runs). Safe to run again:
# each step checks first whether it has been done.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
case "$MODE" in test|runtime) ;; *) echo "usage: bootstrap.sh [test|runtime]" >&2; exit 2 ;; esac

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr)
if [ "$MODE" = test ]; then
  APT_PACKAGES+=(redis-server iproute2)  # iproute2: the multi-node test puts nodes in network namespaces (ip netns)
  # The Azure tests run Azurite, an npm package; take Debian's Node.js where none is installed.
  command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
# pyfuse3 with our patch (FUSE passthrough, noflush, the kernel's directory
# cache), linked to libfuse >= 3.17; before tierfs, whose pin it satisfies.
VENV=$VENV bash scripts/build_pyfuse3.sh
stamp="$VENV/.tierfs-installed"         # the test toolchain (it holds the runtime too)
runtime_stamp="$VENV/.tierfs-runtime"
if [ "$MODE" = runtime ] && [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
  runtime_stamp=$stamp
fi
if [ "$MODE" = runtime ] && { [ ! -f "$runtime_stamp" ] || [ pyproject.toml -nt "$runtime_stamp" ]; }; then
  echo "bootstrap: installing tierfs into $VENV"
  log=$(mktemp)
  if ! { "$VENV/bin/pip" install --disable-pip-version-check --upgrade pip \
         && "$VENV/bin/pip" install --disable-pip-version-check -e .; } >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -40
    echo "bootstrap: pip install failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  "$VENV/bin/python" -c "import tierfs, pyfuse3, lmdb, obstore, prometheus_client"
  touch "$runtime_stamp"
fi
if [ "$MODE" = test ] && { [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; }; then
  echo "bootstrap: installing tierfs and its test tools into $VENV"
  log=$(mktemp)
  if ! { "$VENV/bin/pip" install --disable-pip-version-check --upgrade pip \
         && "$VENV/bin/pip" install --disable-pip-version-check -e '.[test]'; } >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -40
    echo "bootstrap: pip install failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  "$VENV/bin/python" -c "import tierfs, pyfuse3, lmdb, s3fs, gcsfs, adlfs, redis, prometheus_client"  # fail loudly if the install did not take
  touch "$stamp"
fi
# Azurite (Microsoft's Azure Storage emulator) for the Azure tests, pinned, kept beside the venv.
AZURITE_DIR=${AZURITE_DIR:-.tools/azurite}
if [ "$MODE" = test ] && [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  echo "bootstrap: installing azurite@3.35.0 into $AZURITE_DIR"
  mkdir -p "$AZURITE_DIR"
  log=$(mktemp)
  if ! npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error azurite@3.35.0 >"$log" 2>&1; then
    tail -20 "$log"
    echo "bootstrap: npm install azurite failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
fi
# mount(8)'s helper, so that fstab lines and `mount -t fuse.tierfs` run this tierfs (mount resets PATH).
HELPER=/usr/sbin/mount.fuse.tierfs
want=$(sed "s#@TIERFS@#$PWD/$VENV/bin/tierfs#" scripts/mount.fuse.tierfs)
if [ "$(cat "$HELPER" 2>/dev/null)" != "$want" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  printf '%s\n' "$want" | $SUDO tee "$HELPER" >/dev/null && $SUDO chmod 0755 "$HELPER"
  echo "bootstrap: installed $HELPER (fstab type fuse.tierfs)"
fi
echo "bootstrap: ready ($("$VENV/bin/tierfs" --version))"
