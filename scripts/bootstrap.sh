#!/usr/bin/env bash
# Creates .venv/ with Python 3.10 and the locked dependency set, then installs
# the project into it. Safe to re-run: uv only changes what differs from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

# One uv for every machine, the version the pipeline image installs (kubeflow/Dockerfile): its resolver
# wrote the locks and it checks their hashes. It comes hash-checked too (scripts/uv-requirements.txt).
UV_VERSION=$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' scripts/uv-requirements.txt)
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "bootstrap: installing uv $UV_VERSION" >&2
  python3 -m pip install --quiet --user --require-hashes -r scripts/uv-requirements.txt 2>/dev/null \
    || python3 -m pip install --quiet --require-hashes -r scripts/uv-requirements.txt
  export PATH="$(python3 -c 'import site; print(site.USER_BASE)')/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
[ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ] || { echo "bootstrap: uv $UV_VERSION not found on PATH" >&2; exit 1; }

find_python310() {
  local candidate
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.10.*/bin/python3.10; do
      [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
  fi
  candidate=$(command -v python3.10 || true)
  [ -n "$candidate" ] && { echo "$candidate"; return; }
  uv python install 3.10 >&2
  uv python find 3.10
}

# --seed puts pip in the environment: Beam's stager runs `pip` to stage packages for Dataflow.
# (uv pip sync keeps seeded packages; an environment made without them is made again.)
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ] \
    || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
  python=$(find_python310)
  echo "bootstrap: creating .venv with $python" >&2
  rm -rf .venv
  uv venv --quiet --seed --python "$python" .venv
fi

# Every process that imports TFX reads ~8,800 modules; without .pyc files (PYTHONDONTWRITEBYTECODE set,
# as on CI machines, or a read-only environment) each one compiles them again, about 19 s per process on
# two cores (bench/RESULTS.md, make demo). Compiling all ~20,900 modules of the lock takes ~33 s, so only
# the folders make demo imports are compiled here (scripts/bytecode.py); `make test` compiles the rest.
# --require-hashes: every file installed is checked against the sha256 the lock holds for it.
uv pip sync --quiet --require-hashes --python .venv/bin/python requirements.lock
uv pip install --quiet --python .venv/bin/python --no-deps --editable .
# The Kubernetes schemas for the manifest tests, off the environment's path (requirements-schemas.in says why).
uv pip install --quiet --require-hashes --no-deps --python .venv/bin/python --target .venv/k8s-schemas \
  -r requirements-schemas.lock
.venv/bin/python scripts/bytecode.py compile .venv
echo "bootstrap: .venv ready ($(.venv/bin/python --version))" >&2
