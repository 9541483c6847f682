"""`adallava env` and `adallava --version`: what a bug report needs."""

from __future__ import annotations

import json

import accelerate
import pytest
import torch
import transformers

from adallava.cli import main


def test_env_reports_the_installed_versions_device_and_threads(capsys):
    # Bug caught: the report names the wrong package versions (e.g. read from a stale source) or
    # leaves out the device and thread count a performance report depends on.
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["transformers"] == transformers.__version__
    assert info["accelerate"] == accelerate.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")


def test_version_flag_prints_the_main_versions(capsys):
    # Bug caught: `--version` missing or omitting transformers (the dependency that breaks most).
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    line = capsys.readouterr().out
    assert f"transformers {transformers.__version__}" in line and f"torch {torch.__version__}" in line
