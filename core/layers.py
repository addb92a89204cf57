"""Network building blocks shared by the domains (a domain never imports another domain, so what two
of them use lives here): the sinusoidal time embedding, the class labels with their null label
(classifier-free guidance) and the conditioning vector made of both, the GroupNorm group count, and
the time-conditioned residual block of the U-Nets.

The parameter names of ``ResBlock`` (``norm1``, ``conv1``, ``emb``, ``norm2``, ``conv2``, ``skip``)
are those of the shipped checkpoints; keep them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["timestep_embedding", "label_indices", "conditioning_vector", "group_count", "ResBlock", "build_unet_levels"]


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``scale * t`` (B,) -> (B, dim) float32: cosines then sines of
    geometrically spaced frequencies from 1 to 1/10000 (an odd ``dim`` gets a zero last column)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = (scale * t.float().reshape(-1, 1)) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def label_indices(cond, num_classes: int, batch: int, device, who: str) -> torch.Tensor | None:
    """Label indices (B,) from ``cond["label"]`` with the null label ``num_classes`` for a missing
    condition or a negative label; None for an unconditional network (``num_classes`` = 0)."""
    if num_classes == 0:
        return None
    lab = cond.get("label") if isinstance(cond, dict) else cond
    if lab is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    lab = torch.as_tensor(lab, device=device).long().reshape(-1)
    if lab.numel() == 1:
        lab = lab.expand(batch)
    if lab.shape[0] != batch:
        raise ValueError(f"{who}: {lab.shape[0]} labels for a batch of {batch}")
    if bool((lab > num_classes).any()):
        raise ValueError(f"{who}: label index above the null label {num_classes} ({num_classes} classes)")
    return torch.where(lab < 0, torch.full_like(lab, num_classes), lab)


def conditioning_vector(time_mlp: nn.Module, width: int, c_noise, label_emb: nn.Module | None,
                        labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """time_mlp(timestep_embedding(c_noise, width)) plus the label embedding (B, D) for the batch ``x``."""
    B = x.shape[0]
    t = torch.as_tensor(c_noise, device=x.device).float().reshape(-1).expand(B)
    c = time_mlp(timestep_embedding(t, width).to(x.dtype))
    if labels is not None:
        c = c + label_emb(labels).to(c.dtype)
    return c


def group_count(ch: int) -> int:
    """The number of GroupNorm groups for ``ch`` channels: the largest of 8, 4, 2, 1 dividing it."""
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the embedding as scale/shift in between, plus a skip; ``dims``
    = 2 convolves 2-D feature maps (B, C, H, W), 1 convolves sequences (B, C, L). The second conv
    starts at zero, so the block starts as its skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, dims: int = 2):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"ResBlock: dims must be 1 or 2, got {dims}")
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        self.dims = dims
        self.norm1 = nn.GroupNorm(group_count(cin), cin)
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(group_count(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[(...,) + (None,) * self.dims].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


def build_unet_levels(net: nn.Module, channels: int, mults, res_blocks: int, block, conv, mid) -> int:
    """Give ``net`` a U-Net's levels: ``down[i]`` holds ``res_blocks`` blocks ``block(cin, cout, i)`` of
    width ``channels * mults[i]``, with a stride-2 ``conv`` between levels (``downsample``); ``mid``
    = ``mid(ch)``; ``up[j]`` holds ``res_blocks + 1`` blocks over the concatenated skips, each level
    but the last followed by a ``conv`` after nearest upsampling (``upsample``). The last width."""
    widths = [channels * m for m in mults]
    net.down, net.downsample, net.up, net.upsample = (nn.ModuleList() for _ in range(4))
    skips, ch = [channels], channels
    for i, w in enumerate(widths):
        blocks = nn.ModuleList()
        for _ in range(res_blocks):
            blocks.append(block(ch, w, i))
            ch = w
            skips.append(ch)
        net.down.append(blocks)
        if i < len(widths) - 1:
            net.downsample.append(conv(ch, ch, 3, stride=2, padding=1))
            skips.append(ch)
    net.mid = mid(ch)
    for i, w in reversed(list(enumerate(widths))):
        blocks = nn.ModuleList()
        for _ in range(res_blocks + 1):
            blocks.append(block(ch + skips.pop(), w, i))
            ch = w
        net.up.append(blocks)
        if i > 0:
            net.upsample.append(conv(ch, ch, 3, padding=1))
    return ch
