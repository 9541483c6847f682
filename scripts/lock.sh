#!/usr/bin/env bash
# Re-makes requirements/lock.txt: a fresh virtualenv with the newest versions pyproject.toml allows
# (every extra but lmms), frozen; then the same with the lmms extra added: requirements/lock-lmms.txt.
# Run the tests in both (ADALLAVA_EXTRAS=lmms for the second) before committing the new locks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(mktemp -d)/venv
ADALLAVA_UNPINNED=1 ADALLAVA_VENV="$VENV" bash scripts/setup.sh
extras=$("$VENV/bin/python" -c "import tomllib; print(','.join(e for e in tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies'] if e != 'lmms'))")
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$VENV/adallava-constraints.txt" -e ".[$extras]"
{
  echo "# The tested set: every package of adallava[$extras] at an exact version (runtime, dev and extras),"
  echo "# as pip froze it on $(date -u +%Y-%m-%d) ($("$VENV/bin/python" --version), $(uname -m)). scripts/setup.sh installs"
  echo "# with this file as constraints; scripts/lock.sh re-makes it. torch is the CPU build (torch==X is"
  echo "# satisfied by X+cpu); nothing here pulls torchvision."
  "$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
} >requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages) from $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$VENV/adallava-constraints.txt" -e ".[$extras,lmms]"
{
  echo "# The tested set of the [lmms] extra: every package of adallava[$extras,lmms] at an exact version, as pip"
  echo "# froze it on $(date -u +%Y-%m-%d) ($("$VENV/bin/python" --version), $(uname -m)). scripts/setup.sh installs with this"
  echo "# file as constraints when ADALLAVA_EXTRAS=lmms; scripts/lock.sh re-makes it. torch is the CPU build."
  echo "# torchvision: lmms-eval requires it and pip installs PyPI's build, which is linked against CUDA torch and"
  echo "# breaks \`import transformers\` beside CPU torch; setup.sh uninstalls it again there."
  "$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
} >requirements/lock-lmms.txt
echo "wrote requirements/lock-lmms.txt ($(grep -vc '^#' requirements/lock-lmms.txt) packages)"
