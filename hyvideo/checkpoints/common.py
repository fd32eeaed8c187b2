"""Safe, low-memory state-dict reading and strict assignment into meta-built modules.

Every weight file goes through here: `.pt` files are opened with `weights_only=True` (no arbitrary unpickling) and
memory-mapped when the file format allows; safetensors files are memory-mapped by construction. Strict assignment
reports missing/unexpected keys and shape mismatches by name.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors
from torch import nn

from hyvideo.errors import CheckpointError  # raised here; defined with the other error types

StateDict = dict[str, torch.Tensor]

SHOW = 5  # how many offending keys an error message lists


def _listing(keys: list[str]) -> str:
    head = ", ".join(keys[:SHOW])
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return f"{len(keys)}: {head}{more}"


def load_torch_file(path: str | Path) -> object:
    """torch.load with weights_only=True, memory-mapped when the file is in the zip format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    mmap = zipfile.is_zipfile(path)  # legacy (non-zip) files cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported (global|operand)[^.]*", str(e))  # what the payload would have called
        why = found.group(0) if found else re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().split("\n")[0]
        raise CheckpointError(
            f"{path}: refused to load, it holds objects other than tensors ({why[:160]}); "
            "only plain state dicts are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint, truncated or corrupt? ({first[:160]})") from None


def load_safetensors(path: str | Path) -> StateDict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return _load_safetensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file, truncated or corrupt? ({str(e)[:160]})") from None


def load_safetensors_dir(directory: str | Path, stem: str) -> StateDict:
    """`{stem}.safetensors`, or the shards listed in `{stem}.safetensors.index.json`."""
    directory = Path(directory)
    single = directory / f"{stem}.safetensors"
    index = directory / f"{stem}.safetensors.index.json"
    if single.is_file():
        return load_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        sd: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(load_safetensors(directory / shard))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise CheckpointError(f"{index}: keys listed but absent from the shards {_listing(missing)}")
        return sd
    raise CheckpointError(f"{directory}: expected {single.name} or {index.name}")


def as_state_dict(obj: object, path: str | Path, load_key: str | None = None) -> StateDict:
    """Pick the state dict out of a loaded `.pt` object: `obj[load_key]` when present, else a bare dict of tensors."""
    if isinstance(obj, Mapping) and load_key is not None and load_key in obj:
        obj = obj[load_key]
    elif isinstance(obj, Mapping) and load_key is not None and not _is_tensor_dict(obj):
        raise CheckpointError(f"{path}: no '{load_key}' entry; top-level keys are {_listing(sorted(map(str, obj)))}")
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return dict(obj)


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def check_state_dict(expected: Mapping[str, torch.Size], sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError naming missing/unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    wrong = [
        f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])})"
        for k in sorted(set(expected) & set(sd))
        if tuple(sd[k].shape) != tuple(expected[k])
    ]
    if wrong:
        problems.append(f"shape mismatches {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def assign_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Strictly load `sd` into a (meta-built) model by assignment: no second copy of the weights is made."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(expected, sd, what)
    model.load_state_dict(sd, strict=True, assign=True)
    return model
