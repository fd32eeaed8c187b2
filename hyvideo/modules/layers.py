"""Small layers shared by the DiT blocks: RMS/Layer norms in fp32, modulation, MLP, adaLN projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, the normalisation computed in fp32 then cast back."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # the same math in one fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, computed in fp32 (as under autocast) and cast back."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def affine_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """An affine nn.LayerNorm computed in fp32 (as the release does under autocast) and cast back to x's dtype."""
    w = None if norm.weight is None else norm.weight.float()
    b = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift; x (B, L, C), shift/scale (B, C)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class Modulation(nn.Module):
    """vec -> `chunks` modulation vectors: Linear(SiLU(vec)). Checkpoint name `.linear`."""

    def __init__(self, hidden: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(hidden, chunks * hidden)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(vec)).chunk(self.chunks, dim=-1)  # each (B, C)


class MLP(nn.Module):
    """fc2(act(fc1(x))); act is GELU-tanh in the DiT blocks and SiLU in the token refiner."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu_tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.fc1(x), self.act))


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}")
