"""`save_videos_grid`, as in the official package: a batch of videos -> one MP4 showing them in a grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hyvideo import io

GRID_PADDING = 2  # pixels between (and around) the videos of a grid of several, black


def video_grid(videos: torch.Tensor, n_rows: int = 1, padding: int = GRID_PADDING) -> torch.Tensor:
    """(B, C, T, H, W) -> (C, T, H', W'): the B videos tiled `n_rows` per grid row (the argument is named as in the
    official code, where it is the number of videos in each row), `padding` black pixels around each; a single
    video is returned as it is."""
    b, c, t, h, w = videos.shape
    if b == 1:
        return videos[0]
    cols = min(max(n_rows, 1), b)
    rows = math.ceil(b / cols)
    grid = videos.new_zeros(c, t, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(b):
        y, x = divmod(i, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, :, top : top + h, left : left + w] = videos[i]
    return grid


def save_videos_grid(
    videos: torch.Tensor, path: str | Path, rescale: bool = False, n_rows: int = 1, fps: int = 24
) -> Path:
    """Write (B, C, T, H, W) videos with values in [0, 1] (in [-1, 1] with `rescale`) to `path` as one H.264 MP4,
    tiled with `video_grid`; parent folders are created and the file is written atomically."""
    grid = video_grid(torch.as_tensor(videos).detach().float().cpu(), n_rows)  # (C, T, H', W')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.write_mp4(grid, path, fps=fps, signed=rescale)
