"""Reading all the weights of a checkpoint folder, whichever of Hugging Face's layouts it uses."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


def load_weights(directory: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """All tensors of a folder's weights: safetensors shards (`model*.safetensors`, with or without
    an index) or, failing those, PyTorch shards (`pytorch_model*.bin`, read with weights_only=True)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} folder {directory} does not exist")
    for index_name, pattern, reader in (
        ("model.safetensors.index.json", "model*.safetensors", _read_safetensors),
        ("pytorch_model.bin.index.json", "pytorch_model*.bin", _read_bin),
    ):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            for shard in shards:
                if not (directory / shard).is_file():
                    raise FileNotFoundError(
                        f"{what}: shard {shard} listed in {index_name} is missing from {directory}"
                    )
            files = [directory / shard for shard in shards]
        else:
            files = sorted(directory.glob(pattern))
        if files:
            state: dict[str, torch.Tensor] = {}
            for file in files:
                state.update(reader(file))
            return state
    raise FileNotFoundError(
        f"{what} folder {directory} holds no weights: expected model.safetensors (or model-*.safetensors "
        "shards with model.safetensors.index.json) or pytorch_model.bin (or its shards with "
        "pytorch_model.bin.index.json)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state
