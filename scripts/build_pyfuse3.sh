#!/usr/bin/env bash
# Install pyfuse3 3.5.0 with tierfs' patch (scripts/patches/, why: its header)
# into the venv, linked to a libfuse >= 3.17: the system's when it is new
# enough, else libfuse 3.17.2 built from Debian 13's source package into
# .tools/. Called by bootstrap.sh before tierfs itself is installed.
#
# Safe to run twice: a stamp names the patch and this script. Downloads are
# checked against pinned sha256 sums and kept in .tools/cache, and the built
# wheel too, so a second run (a new venv, say) needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TOOLS=$PWD/.tools
CACHE=$TOOLS/cache
LIBFUSE=3.17.2
LIBFUSE_TAR=fuse3_$LIBFUSE.orig.tar.gz
LIBFUSE_SHA256=3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
PYFUSE3=3.5.0
PYFUSE3_TAR=pyfuse3-$PYFUSE3.tar.gz
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PATCH=scripts/patches/pyfuse3-$PYFUSE3-tierfs.patch
TAG=$(cat "$PATCH" "$0" | sha256sum | cut -c1-12)
STAMP=$VENV/.pyfuse3-$TAG

say() { echo "build_pyfuse3: $*"; }
die() { echo "build_pyfuse3: error: $*" >&2; exit 1; }
checked() {  # checked FILE SHA256: the file is there and is what was pinned
  [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status
}

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import pyfuse3; pyfuse3.passthrough_open" 2>/dev/null; then
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. libfuse: the system's if >= 3.17, else our own build.
if pkg-config --atleast-version=3.17 fuse3 2>/dev/null; then
  PKG_PATH=""; RPATH=""
else
  PREFIX=$TOOLS/libfuse-$LIBFUSE
  if [ ! -f "$PREFIX/lib/pkgconfig/fuse3.pc" ]; then
    if ! checked "$CACHE/$LIBFUSE_TAR" "$LIBFUSE_SHA256"; then
      say "fetching Debian's fuse3 $LIBFUSE source package (the system has libfuse $(pkg-config --modversion fuse3 2>/dev/null || echo none))"
      mkdir -p "$work/apt/lists/partial" "$work/apt/cache"
      echo "deb-src http://deb.debian.org/debian trixie main" >"$work/apt/sources.list"
      apt_opts=(-o Dir::Etc::sourcelist="$work/apt/sources.list" -o Dir::Etc::sourceparts=-
                -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache" -o APT::Get::List-Cleanup=0)
      apt-get "${apt_opts[@]}" update -qq >"$work/apt.log" 2>&1 || { tail -5 "$work/apt.log"; die "apt-get update of Debian trixie's sources failed"; }
      (cd "$work" && apt-get "${apt_opts[@]}" source --download-only fuse3 >>apt.log 2>&1) \
        || { tail -5 "$work/apt.log"; die "apt-get source fuse3 (Debian trixie) failed"; }
      [ -f "$work/$LIBFUSE_TAR" ] || die "Debian trixie's fuse3 is no longer $LIBFUSE ($(ls "$work"/*.dsc)); update LIBFUSE in $0"
      cp "$work/$LIBFUSE_TAR" "$CACHE/$LIBFUSE_TAR"
      checked "$CACHE/$LIBFUSE_TAR" "$LIBFUSE_SHA256" || { rm -f "$CACHE/$LIBFUSE_TAR"; die "$LIBFUSE_TAR does not match its pinned sha256"; }
    fi
    if [ ! -x "$TOOLS/buildenv/bin/meson" ]; then
      say "installing meson and ninja into $TOOLS/buildenv"
      python3 -m venv "$TOOLS/buildenv"
      "$TOOLS/buildenv/bin/pip" install -q --disable-pip-version-check meson==1.12.1 ninja==1.13.2 >"$work/pip.log" 2>&1 \
        || { tail -20 "$work/pip.log"; die "pip install meson ninja failed"; }
    fi
    say "building libfuse $LIBFUSE into $PREFIX"
    tar xzf "$CACHE/$LIBFUSE_TAR" -C "$work"
    (cd "$work/fuse-$LIBFUSE" \
      && PATH=$TOOLS/buildenv/bin:$PATH meson setup build --prefix="$PREFIX" --libdir=lib -Dexamples=false \
           -Dutils=false -Dtests=false -Ddisable-mtab=true \
      && PATH=$TOOLS/buildenv/bin:$PATH ninja -C build install) >"$work/libfuse.log" 2>&1 \
      || { tail -30 "$work/libfuse.log"; die "building libfuse $LIBFUSE failed (log above)"; }
  fi
  PKG_PATH=$PREFIX/lib/pkgconfig; RPATH="-Wl,-rpath,$PREFIX/lib"
fi

# 2. pyfuse3 with the patch, built once per (patch, libfuse) and kept.
PYTAG=$("$VENV/bin/python" -c 'import sys; print(sys.implementation.cache_tag)')
WHEELS=$CACHE/pyfuse3-$TAG-$PYTAG-$(echo "${RPATH:-system}" | sha256sum | cut -c1-8)
wheel=$(ls "$WHEELS"/pyfuse3-$PYFUSE3-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  if ! checked "$CACHE/$PYFUSE3_TAR" "$PYFUSE3_SHA256"; then
    say "fetching the pyfuse3 $PYFUSE3 sdist"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: "pyfuse3==$PYFUSE3" \
      -d "$work/dl" >"$work/pip.log" 2>&1 || { tail -20 "$work/pip.log"; die "pip download pyfuse3==$PYFUSE3 failed"; }
    cp "$work/dl/$PYFUSE3_TAR" "$CACHE/$PYFUSE3_TAR"
    checked "$CACHE/$PYFUSE3_TAR" "$PYFUSE3_SHA256" || { rm -f "$CACHE/$PYFUSE3_TAR"; die "$PYFUSE3_TAR does not match its pinned sha256"; }
  fi
  say "building pyfuse3 $PYFUSE3 with $PATCH"
  tar xzf "$CACHE/$PYFUSE3_TAR" -C "$work"
  patch -d "$work/pyfuse3-$PYFUSE3" -p1 --quiet <"$PATCH" || die "$PATCH does not apply to pyfuse3 $PYFUSE3"
  PKG_CONFIG_PATH=$PKG_PATH LDFLAGS=$RPATH SETUPTOOLS_SCM_PRETEND_VERSION=$PYFUSE3 \
    "$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/wheel" "$work/pyfuse3-$PYFUSE3" \
    >"$work/pip.log" 2>&1 || { grep -v '^WARNING: Location' "$work/pip.log" | tail -30; die "building pyfuse3 failed (log above)"; }
  mkdir -p "$WHEELS"
  cp "$work"/wheel/pyfuse3-*.whl "$WHEELS/"
  wheel=$(ls "$WHEELS"/pyfuse3-$PYFUSE3-*.whl | head -1)
fi
# (then its one dependency, trio, which a new venv does not have yet)
{ "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel" \
  && "$VENV/bin/pip" install -q --disable-pip-version-check "$wheel"; } >"$work/pip.log" 2>&1 \
  || { grep -v '^WARNING: Location' "$work/pip.log" | tail -20; die "installing $wheel failed"; }
"$VENV/bin/python" -c "import pyfuse3; pyfuse3.passthrough_open" || die "the installed pyfuse3 lacks the patch"
rm -f "$VENV"/.pyfuse3-*
touch "$STAMP"
say "pyfuse3 $PYFUSE3 (patched) installed, linked to libfuse $( [ -n "$RPATH" ] && echo "$LIBFUSE in $PREFIX" || pkg-config --modversion fuse3)"
