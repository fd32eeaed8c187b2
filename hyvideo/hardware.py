"""Facts about the machine a run needs before anything loads: which devices exist, what the GPU can do, which
attention kernels are installed, and the switch to deterministic algorithms.

Answers only; the request layer turns a missing capability into a one-line `UsageError` naming the flag.
"""

from __future__ import annotations

import importlib.util
import os

import torch

# Compute capabilities SageAttention's `sageattn` has a kernel for (its dispatch raises on any other card)
SAGE_CAPABILITIES: tuple[tuple[int, int], ...] = ((8, 0), (8, 6), (8, 9), (9, 0), (12, 0), (12, 1))
# Compute capabilities flash-attn 2 has kernels for: its C++ entry points accept sm8x and sm90 and raise "FlashAttention
# only supports Ampere GPUs or newer" on any other card (Turing and Volta; also sm10x/sm12x in the releases that check
# for sm90 exactly, so "auto" does not pick it there: SDPA is always correct)
FLASH_MAJOR, FLASH_HOPPER = 8, (9, 0)
# cuBLAS is deterministic only with one of these workspace settings, read before its first GEMM
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def cuda_count() -> int:
    """CUDA devices present (0 when CUDA is unavailable)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def default_device() -> str:
    """The device a run without --device uses: "cuda" when present, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def capability(device: str | torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device; None for other devices."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def device_name(device: str | torch.device) -> str:
    """The GPU's marketing name (e.g. "NVIDIA H100 80GB HBM3"), for messages."""
    return torch.cuda.get_device_name(torch.device(device))


def scaled_mm_available(device: torch.device) -> bool:
    """fp8 matmul hardware: CUDA compute capability >= 8.9 (Ada, Hopper and later) with `torch._scaled_mm`."""
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def sage_supported(cap: tuple[int, int] | None) -> bool:
    """Whether `sageattn` has a kernel for a card of compute capability `cap`."""
    return cap in SAGE_CAPABILITIES


def flash_supported(cap: tuple[int, int] | None) -> bool:
    """Whether flash-attn 2 has a kernel for a card of compute capability `cap` (every sm8x, and sm90)."""
    return cap is not None and (cap[0] == FLASH_MAJOR or cap == FLASH_HOPPER)


def installed(module: str) -> bool:
    """Whether a package can be imported (found on the path; not imported here)."""
    return importlib.util.find_spec(module) is not None


def prepare_deterministic() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS (kept when the user gave a valid value). Must run before
    the first CUDA GEMM, so the request layer calls it while validating --reproduce."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]


def make_deterministic() -> None:
    """--reproduce: deterministic algorithms everywhere (cuBLAS workspace first)."""
    prepare_deterministic()
    torch.use_deterministic_algorithms(True)
