#!/usr/bin/env bash
# Test the extension on the newest Blender (bpy 5.3, Python 3.13) with the worker in an engine
# Python (docs/blender.md, "Testing on Blender 5.3").
#
# Blender 5.3's bpy needs Python 3.13, which this machine's Debian lacks: the script builds a
# Debian trixie chroot (debootstrap, cached), installs bpy in a venv inside it, bind-mounts this
# tree and the engine Python's environment at their own paths, and runs
# scripts/blender_latest_check.py there: register the extension, run the operators' checks, one
# Reconstruct from cameras and one Photos Without Cameras job, each must leave a textured mesh in
# the scene. Idempotent: every step that is done is skipped on the next run.
#
#   sudo scripts/test_blender_latest.sh            # needs root (debootstrap, chroot, mounts)
#
# Environment:
#   VIEWFORGE_CHROOT          the chroot (default /var/cache/viewforge/trixie-bpy53)
#   VIEWFORGE_ENGINE_PYTHON   the engine Python (default: this tree's .venv/bin/python, else
#                             /work/main/.venv/bin/python); it must have the engine's packages
#   VIEWFORGE_BPY_VERSION     bpy to install (default 5.3.0)
#   DEBIAN_MIRROR             default http://deb.debian.org/debian
#   VIEWFORGE_LATEST_ARGS     extra arguments for blender_latest_check.py (e.g. "--no-refine-cameras")
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${VIEWFORGE_CHROOT:-/var/cache/viewforge/trixie-bpy53}"
BPY_VERSION="${VIEWFORGE_BPY_VERSION:-5.3.0}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LIBS="libx11-6 libxi6 libxxf86vm1 libxfixes3 libxrender1 libxkbcommon0 libsm6 libgl1 libegl1 libgomp1 ca-certificates"

if [ -z "${VIEWFORGE_ENGINE_PYTHON:-}" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then VIEWFORGE_ENGINE_PYTHON="$HERE/.venv/bin/python"
  else VIEWFORGE_ENGINE_PYTHON=/work/main/.venv/bin/python; fi
fi
ENGINE_PY="$VIEWFORGE_ENGINE_PYTHON"
[ -x "$ENGINE_PY" ] || { echo "engine Python $ENGINE_PY does not exist: set VIEWFORGE_ENGINE_PYTHON to a venv's bin/python (./scripts/setup.sh builds .venv)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (debootstrap, chroot, bind mounts): run it with sudo" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }

# The folders the engine Python needs, mounted at the same paths inside the chroot: its venv
# (sys.prefix) and the interpreter it was made from (sys.base_prefix), plus this tree.
read -r ENGINE_PREFIX ENGINE_BASE < <("$ENGINE_PY" -c 'import sys; print(sys.prefix, sys.base_prefix)')
MOUNTS=("$HERE" "$ENGINE_PREFIX" "$ENGINE_BASE")

t0=$(date +%s)
if [ ! -f "$ROOT/.viewforge-base" ]; then
  echo "== debootstrap trixie into $ROOT"
  rm -rf "$ROOT"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include=python3.13,python3.13-venv trixie "$ROOT" "$MIRROR"
  touch "$ROOT/.viewforge-base"
fi

MOUNTED=()
cleanup() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
bind() {  # bind SRC into the chroot at the same path (or at $2)
  local dst="$ROOT${2:-$1}"
  mkdir -p "$dst"
  if ! mountpoint -q "$dst"; then mount --bind "$1" "$dst"; MOUNTED+=("$dst"); fi
}
mkdir -p "$ROOT/proc"
if ! mountpoint -q "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; MOUNTED+=("$ROOT/proc"); fi
bind /dev
# The host's CA bundle (the package mirrors may sit behind its own certificate authority) and DNS.
mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/usr/local/share/ca-certificates/host-bundle.crt"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-bundle.crt"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"; }

if [ ! -f "$ROOT/.viewforge-libs" ]; then
  echo "== apt-get install Blender's libraries"
  in_root apt-get -o Acquire::https::CAInfo=/etc/ssl/certs/host-bundle.crt update
  in_root env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::https::CAInfo=/etc/ssl/certs/host-bundle.crt \
    install -y --no-install-recommends $LIBS
  touch "$ROOT/.viewforge-libs"
fi

if [ ! -f "$ROOT/.viewforge-bpy-$BPY_VERSION" ]; then
  echo "== bpy $BPY_VERSION in /opt/bpy (Python 3.13)"
  in_root python3.13 -m venv /opt/bpy
  in_root env PIP_CERT=/etc/ssl/certs/host-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    /opt/bpy/bin/pip install "bpy==$BPY_VERSION"
  touch "$ROOT/.viewforge-bpy-$BPY_VERSION"
fi
# The wheels the extension bundles (blender_manifest.toml), at constraints.txt's versions: what
# installing the extension's zip would add to Blender's Python.
WHEELS="$(grep -E '^(trimesh|plyfile)==' "$HERE/constraints.txt" | tr '\n' ' ')"
if [ ! -f "$ROOT/.viewforge-wheels" ] || [ "$(cat "$ROOT/.viewforge-wheels")" != "$WHEELS" ]; then
  echo "== bundled wheels: $WHEELS"
  # shellcheck disable=SC2086
  in_root env PIP_CERT=/etc/ssl/certs/host-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    /opt/bpy/bin/pip install --no-deps $WHEELS
  echo "$WHEELS" > "$ROOT/.viewforge-wheels"
fi
t1=$(date +%s)
echo "== chroot ready in $((t1 - t0)) s"

for m in "${MOUNTS[@]}"; do bind "$m"; done
WORK="$(mktemp -d "$ROOT/tmp/viewforge-latest.XXXXXX")"
status=0
# shellcheck disable=SC2086
in_root env VIEWFORGE_ENGINE_PYTHON="$ENGINE_PY" HF_HUB_OFFLINE=1 HOME="${WORK#"$ROOT"}" \
  XDG_CACHE_HOME="${WORK#"$ROOT"}/cache" BLENDER_USER_RESOURCES="${WORK#"$ROOT"}/user" \
  /opt/bpy/bin/python "$HERE/scripts/blender_latest_check.py" --tree "$HERE" --work "${WORK#"$ROOT"}" \
  ${VIEWFORGE_LATEST_ARGS:-} || status=$?
rm -rf "$WORK"
echo "== total $(( $(date +%s) - t0 )) s"
exit $status
