"""Step caching (TeaCache, Liu et al. 2024) wrapped around a `HYVideoDiT` from outside.

On step i the wrapper embeds the inputs, computes the modulated input of the first double block,
    m_i = LN(img_i) * (1 + scale1(vec_i)) + shift1(vec_i)                                 (B, Li, C)
and its relative L1 change d_i = mean|m_i - m_{i-1}| / mean|m_{i-1}|. The change is mapped through the published
HunyuanVideo polynomial p (TeaCache4HunyuanVideo) and accumulated: a_i = a_{i-1} + p(d_i). While a_i < threshold
the text refiner and the blocks are skipped and the image tokens after them are taken as img_i + r, where r = (blocks(img) - img) is the
residual of the last computed step; otherwise the blocks run, r is refreshed and a_i resets to 0. The first and the
last step of a run are always computed. The final layer always runs (it is modulated by this step's vec).

Each conditioning gets its own state (real CFG calls the model with the prompt and the negative prompt every step):
a state is keyed by the identity of the `text_states` tensor passed in, and holds a reference to it, so a new tensor
can never be mistaken for an old one (at worst a stream starts fresh and computes).

Host syncs: the skip decision is a branch on the host, so a step whose decision depends on d_i reads it once
(`relative_l1`, one `.item()` per stream and step); the first and the last step of a run, which always compute,
read nothing. Block 0's modulation weights are obtained through the offload that manages them (`offload.acquire`):
loaded, and waited for when they were prefetched on a side stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from loguru import logger
from torch import nn

from hyvideo.modules.dit import HYVideoDiT
from hyvideo.modules.layers import layer_norm, modulate
from hyvideo.offload import acquire

# p(d) = sum_k c_k d^(4-k), highest power first: the rescaling TeaCache fitted for HunyuanVideo.
HUNYUAN_COEFFICIENTS: tuple[float, ...] = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)


def rescale(distance: float, coefficients: tuple[float, ...] = HUNYUAN_COEFFICIENTS) -> float:
    """p(distance) by Horner's rule; coefficients highest power first."""
    out = 0.0
    for c in coefficients:
        out = out * distance + c
    return out


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous|, in fp32 over all elements."""
    prev = previous.float()
    return ((current.float() - prev).abs().mean() / prev.abs().mean()).item()


@dataclass
class SkipPolicy:
    """The decision rule alone: first and last step compute; otherwise skip while the accumulated change is small."""

    threshold: float  # skip while the accumulated rescaled change stays below this; 0 never skips
    steps: int  # steps in one run; the count wraps so one policy serves consecutive runs
    coefficients: tuple[float, ...] = HUNYUAN_COEFFICIENTS
    step: int = 0  # index of the next step within the current run
    accumulated: float = 0.0

    def needs_distance(self) -> bool:
        """Whether the decision for step `self.step` reads the distance (the first and last step always compute)."""
        return 0 < self.step < self.steps - 1

    def compute(self, distance: float | None) -> bool:
        """Whether step `self.step` must run the blocks, given its relative change (None: no previous input)."""
        first_or_last = self.step == 0 or self.step == self.steps - 1
        self.step = (self.step + 1) % self.steps
        if first_or_last or distance is None:
            self.accumulated = 0.0
            return True
        self.accumulated += rescale(distance, self.coefficients)
        if self.accumulated < self.threshold:
            return False
        self.accumulated = 0.0
        return True


@dataclass
class StreamState:
    """Cache of one conditioning stream."""

    name: str
    policy: SkipPolicy
    key: torch.Tensor | None = None  # the text_states tensor this stream belongs to (held, so ids stay unique)
    previous: torch.Tensor | None = None  # modulated input of the previous step (B, Li, C)
    residual: torch.Tensor | None = None  # image tokens after all blocks minus before, last computed step (B, Li, C)
    computed: list[int] = field(default_factory=list)  # step indices that ran the blocks, current/last run
    skipped: list[int] = field(default_factory=list)


def first_modulation(block: nn.Module, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift1, scale1) of a double block's image modulation for vec (B, C), called outside the block's forward,
    so whatever normally makes its weights available there is done here: an FSDP-sharded block is all-gathered
    (every rank calls this in step) and resharded; an offloaded block is loaded (and on CUDA waited for) by its
    offload (`offload.acquire`)."""
    if hasattr(block, "unshard") and hasattr(block, "reshard"):  # FSDP2 (fully_shard): collective, every rank
        block.unshard()
        try:
            return block.img_mod(vec)[:2]
        finally:
            block.reshard()
    acquire(block)
    return block.img_mod(vec)[:2]


class TeaCache:
    """Callable with the signature of `HYVideoDiT.forward` that skips the transformer blocks on similar steps.

    `threshold` 0 computes every step (same output as the model). `steps` is the number of denoising steps of one
    run. Call `name_stream(text_states, "cond")` to give a conditioning a readable name in the log.
    """

    def __init__(
        self,
        model: HYVideoDiT,
        threshold: float,
        steps: int,
        coefficients: tuple[float, ...] = HUNYUAN_COEFFICIENTS,
    ) -> None:
        if len(model.double_blocks) == 0:
            raise ValueError("TeaCache needs a DiT with at least one double-stream block")
        if threshold < 0 or steps < 1:
            raise ValueError(f"TeaCache needs threshold >= 0 and steps >= 1, got {threshold}, {steps}")
        self.model = model
        self.threshold = threshold
        self.steps = steps
        self.coefficients = coefficients
        self.streams: list[StreamState] = []

    def name_stream(self, text_states: torch.Tensor, name: str) -> StreamState:
        state = self._state(text_states)
        state.name = name
        return state

    def _state(self, text_states: torch.Tensor) -> StreamState:
        for state in self.streams:
            if state.key is text_states:
                return state
        state = StreamState(f"stream {len(self.streams)}", SkipPolicy(self.threshold, self.steps, self.coefficients))
        state.key = text_states
        self.streams.append(state)
        return state

    @torch.no_grad()
    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_pooled: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model, state = self.model, self._state(text_states)
        img, vec, t = model.embed_image(x, t, text_pooled, guidance)  # the text refiner runs only when computing
        block0 = model.double_blocks[0]
        shift, scale = first_modulation(block0, vec)
        modulated = modulate(layer_norm(img, block0.eps), shift, scale)  # (B, Li, C)
        same_shape = state.previous is not None and state.previous.shape == modulated.shape
        # the one host sync of a step, and only when the decision depends on it
        distance = relative_l1(modulated, state.previous) if same_shape and state.policy.needs_distance() else None
        step = state.policy.step
        if step == 0:
            state.computed, state.skipped = [], []
        if state.policy.compute(distance) or state.residual is None or state.residual.shape != img.shape:
            txt, ctx = model.embed_text(text_states, text_mask, t, x, text_pooled)  # token_replace: first-frame vector
            out = model.run_blocks(img, txt, vec, ctx)
            state.residual = out - img
            state.computed.append(step)
        else:
            out = img + state.residual
            state.skipped.append(step)
        state.previous = modulated
        if state.policy.step == 0:  # the run is complete
            logger.info(self.summary(state))
        return model.unpatchify(model.final_layer(out, vec), model.token_grid(x))

    def summary(self, state: StreamState) -> str:
        n = len(state.computed) + len(state.skipped)
        skipped = ", ".join(map(str, state.skipped)) or "none"
        return (
            f"TeaCache {state.name}: computed {len(state.computed)} of {n} steps "
            f"(threshold {self.threshold:g}); skipped steps: {skipped}"
        )
