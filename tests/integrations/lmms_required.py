"""lmms-eval is the optional [lmms] extra. Outside CI a test module that needs it is skipped when it is
not installed; under CI (`CI` set, as .ci/run does) it must run, so a missing install fails instead."""

import os

import pytest

IN_CI = bool(os.environ.get("CI"))
INSTALL = "pip install -e '.[dev,lmms]', or ADALLAVA_EXTRAS=lmms bash scripts/setup.sh (CI does)"


def require_lmms_eval() -> None:
    """Call at module level, before importing lmms_eval."""
    if not IN_CI:
        pytest.importorskip("lmms_eval", reason=f"lmms-eval is not installed: {INSTALL}")
