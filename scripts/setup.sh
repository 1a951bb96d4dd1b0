#!/usr/bin/env bash
# Idempotent set-up: builds .venv from requirements*.txt + constraints.txt when it is missing or
# stale (the inputs' hash differs from the one recorded at the last successful set-up), then
# installs this tree as the package `viewforge` (editable) with the `viewforge` command.
# Usage: scripts/setup.sh            (quiet when already up to date)
#        PYTHON=/path/to/python3.11 scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for p in python3.11 python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      command -v "$p"; return
    fi
  done
  echo "viewforge setup: error: Python 3.11 not found (bpy 5.0.1 needs exactly 3.11). Fix: install Python 3.11 or set PYTHON=/path/to/python3.11." >&2
  exit 2
}

PY=$(pick_python)
inputs="requirements.txt requirements-dev.txt constraints.txt pyproject.toml scripts/setup.sh"
stamp=$( { "$PY" -c 'import sys; print(sys.version)'; cat $inputs; } | sha256sum | cut -d' ' -f1)
stamp_file=.venv/.viewforge-setup-stamp

if [ -x .venv/bin/python ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi

echo "viewforge setup: building .venv (first run or requirements changed) ..." >&2
if ! [ -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
rm -f "$stamp_file"
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
echo "$stamp" > "$stamp_file"
echo "viewforge setup: done (.venv/bin/viewforge)" >&2
