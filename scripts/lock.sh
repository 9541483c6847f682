#!/usr/bin/env bash
# Re-makes requirements/lock.txt: a fresh virtualenv with the newest versions pyproject.toml allows
# (every extra), frozen. Run the tests in that virtualenv before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(mktemp -d)/venv
ADALLAVA_UNPINNED=1 ADALLAVA_VENV="$VENV" bash scripts/setup.sh
extras=$("$VENV/bin/python" -c "import tomllib; print(','.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']))")
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$VENV/adallava-constraints.txt" -e ".[$extras]"
{
  echo "# The tested set: every package of adallava[$extras] at an exact version (runtime, dev and extras),"
  echo "# as pip froze it on $(date -u +%Y-%m-%d) ($("$VENV/bin/python" --version), $(uname -m)). scripts/setup.sh installs"
  echo "# with this file as constraints; scripts/lock.sh re-makes it. torch is the CPU build (torch==X is"
  echo "# satisfied by X+cpu); nothing here pulls torchvision."
  "$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
} >requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages) from $VENV"
