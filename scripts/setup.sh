#!/usr/bin/env bash
# Sets adallava up in a virtualenv (.venv by default): PyTorch's CPU build first, pinned, so pip never
# pulls the multi-GB CUDA build; then adallava (editable) with its dev tools, at the exact versions of
# requirements/lock.txt (the tested set). Works where the system Python refuses `pip install`
# (PEP 668): nothing is installed outside the virtualenv. Running it again is a no-op unless
# pyproject.toml, the lock or the settings below changed.
#
#   ADALLAVA_UNPINNED=1   the newest versions pyproject.toml allows instead of the lock (torch stays pinned)
#   ADALLAVA_EXTRAS=lmms  also the [lmms] extra (lmms-eval, docs/lmms-eval.md), locked by requirements/lock-lmms.txt
#   ADALLAVA_TORCH=SPEC   the torch requirement (default: torch==2.13.0, the CPU build)
#   ADALLAVA_VENV=DIR     where the virtualenv goes (default: .venv in the repository)
#   PYTHON=EXE            the Python that creates the virtualenv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ADALLAVA_VENV:-.venv}
TORCH=${ADALLAVA_TORCH:-torch==2.13.0}
UNPINNED=${ADALLAVA_UNPINNED:-0}
EXTRAS=${ADALLAVA_EXTRAS:-}
LOCK=requirements/lock.txt
case ",$EXTRAS," in *,lmms,*) LOCK=requirements/lock-lmms.txt ;; esac

if [ ! -x "$VENV/bin/python" ]; then
  if ! "${PYTHON:-python3}" -m venv "$VENV" 2>/tmp/adallava-venv.err; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then  # Debian's python3 lacks ensurepip
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$VENV" && "${PYTHON:-python3}" -m venv "$VENV"
    else
      cat /tmp/adallava-venv.err >&2
      echo "setup: cannot create a virtualenv with ${PYTHON:-python3}; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
fi
PY="$VENV/bin/python"

# What this setup installs; unchanged since the last run -> nothing to do.
stamp="$({ cat pyproject.toml; cat "$LOCK" 2>/dev/null || true; } | sha256sum | cut -c1-16) unpinned=$UNPINNED torch=$TORCH extras=$EXTRAS"
if [ -f "$VENV/.adallava-setup" ] && [ "$(cat "$VENV/.adallava-setup")" = "$stamp" ]; then
  exit 0
fi

# Constraints for this install: the lock (with ADALLAVA_TORCH's torch instead of the locked one),
# or, unpinned, only torch, so that no dependency can move it to a CUDA build.
constraints="$VENV/adallava-constraints.txt"
if [ "$UNPINNED" = 1 ]; then
  echo "$TORCH" >"$constraints"
elif [ -f "$LOCK" ]; then
  { grep -v '^torch==' "$LOCK"; echo "$TORCH"; } >"$constraints"
else
  echo "setup: $LOCK is missing (scripts/lock.sh makes it; ADALLAVA_UNPINNED=1 installs without it)" >&2
  exit 1
fi
echo "setup: installing into $VENV ($([ "$UNPINNED" = 1 ] && echo "newest allowed versions" || echo "locked versions, $LOCK"); $TORCH)" >&2
"$PY" -m pip install -q --disable-pip-version-check -c "$constraints" "$TORCH"
"$PY" -m pip install -q --disable-pip-version-check -c "$constraints" -e ".[dev${EXTRAS:+,$EXTRAS}]"
# lmms-eval requires torchvision, and PyPI's torchvision is built against CUDA torch: beside the CPU build
# it cannot load its operators and breaks `import transformers`. Nothing adallava runs in lmms-eval uses it.
if "$PY" -m pip show -q torchvision 2>/dev/null && "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then
  "$PY" -m pip uninstall -y -q --disable-pip-version-check torchvision
fi
echo "$stamp" >"$VENV/.adallava-setup"
"$VENV/bin/adallava" --version >&2
