"""Monotonic alignment search (Glow-TTS, Kim et al. 2020; used by Grad-TTS and Matcha-TTS) and the
paths a duration predictor's durations make.

MAS finds the alignment of text tokens to mel frames -- every frame to one token, tokens in order,
each token at least one frame -- that maximises the summed log-likelihood logp[i, j] of frame j under
token i. Dynamic programming over frames, vectorised over the batch and the tokens:

    Q[i, j] = logp[i, j] + max(Q[i, j - 1], Q[i - 1, j - 1]),   Q[0, 0] = logp[0, 0]

then backtracking from (T_x - 1, T_y - 1) of each item. O(T_x T_y) work in T_y vector steps.
tests/test_tts_model.py checks it against a brute-force enumeration of every monotonic alignment.
"""
from __future__ import annotations

import torch


def sequence_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True inside each sequence."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


@torch.no_grad()
def monotonic_alignment(logp: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor) -> torch.Tensor:
    """logp [B, T_x, T_y] -> the best monotonic path [B, T_x, T_y] (0/1, float), item b covering its
    x_lengths[b] tokens and y_lengths[b] frames (y_lengths >= x_lengths)."""
    B, T_x, T_y = logp.shape
    if bool((y_lengths < x_lengths).any()):
        raise ValueError("monotonic alignment needs at least as many frames as tokens in every item")
    neg = torch.finfo(torch.float32).min / 4
    lp = logp.float().masked_fill(~sequence_mask(x_lengths, T_x)[:, :, None], neg).permute(2, 0, 1).contiguous()
    Q = torch.empty(T_y, B, T_x, dtype=torch.float32, device=logp.device)  # frame-major: each step one block
    first = torch.full((B, T_x), neg, device=logp.device)
    first[:, 0] = 0.0
    Q[0] = first + lp[0]
    pad = torch.full((B, 1), neg, device=logp.device)
    for j in range(1, T_y):
        prev = Q[j - 1]
        torch.maximum(prev, torch.cat([pad, prev[:, :-1]], 1), out=Q[j])
        Q[j] += lp[j]
    path = torch.zeros(B, T_x, T_y, dtype=torch.float32, device=logp.device)
    index = (x_lengths - 1).clone()
    inside_all = torch.arange(T_y, device=logp.device)[:, None] < y_lengths[None]  # [T_y, B]
    chosen = torch.empty(T_y, B, dtype=torch.long, device=logp.device)
    for j in range(T_y - 1, -1, -1):
        chosen[j] = index
        if j == 0:
            break
        q = Q[j - 1]
        stay = q.gather(1, index[:, None])[:, 0]
        move = q.gather(1, (index - 1).clamp(min=0)[:, None])[:, 0]
        step = inside_all[j] & (index > 0) & ((index == j) | (move > stay))
        index = index - step.long()
    b, j = torch.nonzero(inside_all.T, as_tuple=True)
    path[b, chosen[j, b], j] = 1.0
    return path


def generate_path(durations: torch.Tensor, x_mask: torch.Tensor, max_frames: int | None = None) -> torch.Tensor:
    """Whole-frame durations [B, T_x] -> the path [B, T_x, T_y]: token i covers frames
    [sum(d[:i]), sum(d[:i + 1]))."""
    d = (durations * x_mask).long()
    ends = d.cumsum(1)
    T_y = int(ends[:, -1].max()) if max_frames is None else max_frames
    frames = torch.arange(T_y, device=d.device)[None, None]
    return ((frames < ends[:, :, None]) & (frames >= (ends - d)[:, :, None])).float()
