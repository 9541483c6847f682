"""Temporary alias of the old path (issue 13's move)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("adallava.core.config")
