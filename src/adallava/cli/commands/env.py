"""`adallava env`: the versions and machine facts a bug report needs."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata

PACKAGES = ("adallava", "torch", "transformers", "accelerate", "tokenizers", "safetensors", "peft")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "env", help="print versions, device and threads (paste it into a bug report)", description=__doc__
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict:
    """Package versions, Python, platform, torch's device and thread count."""
    import torch

    info = {name: version_of(name) for name in PACKAGES}
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    info["executable"] = sys.executable
    if torch.cuda.is_available():
        info["device"] = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = "cpu (no CUDA device visible)"
    info["torch_threads"] = torch.get_num_threads()
    info["cpu_count"] = os.cpu_count()
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "unset")
    return info


def run(args) -> int:
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
