"""A small class-conditional 2-D U-Net over (mel x time) for the audio domain's ``mel`` field.

Input: a dense ``State`` with field ``mel`` of shape (B, 1, n_mels, frames), diffusion time ``t``
(B,) and a condition ``{"label": (B,) int64}`` (or None). Output: a ``State`` of the same layout
(the raw prediction, e.g. eps).

- time: sinusoidal embedding of ``1000 t`` -> MLP; label: ``nn.Embedding(num_classes + 1)`` where
  index ``num_classes`` is the null label (classifier-free guidance; also used when ``cond`` is
  None or a label is negative). Both are added and fed to every residual block (scale/shift).
- sized by ``channels`` (base width), ``mults`` (one entry per level: width multipliers; levels-1
  downsamplings by 2 in both axes), ``res_blocks`` per level, ``dropout``.
- mels whose size is not divisible by ``2 ** (levels - 1)`` are zero-padded internally (at the end of
  each axis) and the output is cropped back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.layers import (ResBlock, build_unet_levels, conditioning_vector, group_count, label_indices,
                            timestep_embedding)
from ...core.state import State

__all__ = ["MelUNet", "MelUNet1d", "build_unet", "build_unet1d", "timestep_embedding"]


class MelUNet(nn.Module):
    def __init__(self, num_classes: int = 0, channels: int = 32, mults=(1, 2, 2), res_blocks: int = 1,
                 emb_dim: int | None = None, dropout: float = 0.0, field: str = "mel", in_channels: int = 1):
        super().__init__()
        self.build(2, in_channels, num_classes, channels, mults, res_blocks, emb_dim, dropout, field)

    def build(self, dims: int, data_channels: int, num_classes: int, channels: int, mults, res_blocks: int,
              emb_dim: int | None, dropout: float, field: str) -> None:
        """The embedding MLPs and the levels of ``dims``-D convolutions over ``data_channels`` input
        channels (the parameter names are those of the shipped checkpoints)."""
        name = type(self).__name__
        mults = [int(m) for m in mults]
        if not mults or min(mults) < 1 or channels < 1 or res_blocks < 1 or data_channels < 1:
            raise ValueError(f"{name}: need channels >= 1, res_blocks >= 1, input channels >= 1 and positive "
                             f"mults, got channels={channels}, mults={mults}, res_blocks={res_blocks}, "
                             f"input channels={data_channels}")
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        self.field, self.num_classes, self.levels = field, int(num_classes), len(mults)
        self.temb_dim = int(channels)
        emb_dim = int(emb_dim or 4 * channels)
        self.time_mlp = nn.Sequential(nn.Linear(self.temb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes > 0 else None
        self.conv_in = conv(data_channels, channels, 3, padding=1)
        def res(cin: int, cout: int, level: int = 0) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, dims)

        ch = build_unet_levels(self, channels, mults, res_blocks, res, conv,
                               lambda ch: nn.ModuleList([res(ch, ch), res(ch, ch)]))
        self.norm_out = nn.GroupNorm(group_count(ch), ch)
        self.conv_out = conv(ch, data_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def labels(self, cond, batch: int, device) -> torch.Tensor | None:
        """Label indices (B,) with the null label for None / missing / negative labels."""
        return label_indices(cond, self.num_classes if self.label_emb is not None else 0, batch, device, "MelUNet")

    def forward_tensor(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        _, _, H, W = x.shape
        m = 2 ** (self.levels - 1)
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.trunk(x, self.embedding(t, cond, x))
        return out[:, :, :H, :W]

    def embedding(self, t, cond, x: torch.Tensor) -> torch.Tensor:
        """Time embedding plus label embedding (B, emb_dim) for the batch ``x``."""
        return conditioning_vector(self.time_mlp, self.temb_dim, t, self.label_emb,
                                   self.labels(cond, x.shape[0], x.device), x)

    def trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """conv_in, the down path (skips kept), the middle, the up path (skips concatenated), conv_out;
        any number of spatial axes (nearest upsampling by 2 in each)."""
        h = self.conv_in(x)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for blk in blocks:
                h = blk(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for j, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x: State, t: torch.Tensor, cond=None) -> State:
        return x.like({self.field: self.forward_tensor(x[self.field], t, cond)})


def build_unet(model_cfg: dict, num_classes: int) -> MelUNet:
    m = model_cfg or {}
    return MelUNet(num_classes=num_classes, channels=int(m.get("channels", 32)), mults=m.get("mults", [1, 2, 2]),
                   res_blocks=int(m.get("res_blocks", 1)), emb_dim=int(m.get("emb_dim", 0)) or None,
                   dropout=float(m.get("dropout", 0.0)))


class MelUNet1d(MelUNet):
    """The U-Net over time alone, mel bands as input channels: the same conditioning, levels and
    skips as ``MelUNet`` with Conv1d, downsampling by 2 in time only. About ten times cheaper than the
    2-D network at the same width for 64 bands, which is what makes CPU training practical."""

    def __init__(self, num_classes: int = 0, n_mels: int = 64, channels: int = 128, mults=(1, 2, 2),
                 res_blocks: int = 2, emb_dim: int | None = None, dropout: float = 0.0, field: str = "mel"):
        nn.Module.__init__(self)
        self.n_mels = int(n_mels)
        self.build(1, self.n_mels, num_classes, channels, mults, res_blocks, emb_dim, dropout, field)

    def forward_tensor(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        _, C, H, W = x.shape
        if C != 1 or H != self.n_mels:
            raise ValueError(f"MelUNet1d: expected mels of shape (B, 1, {self.n_mels}, frames), got {tuple(x.shape)}")
        m = 2 ** (self.levels - 1)
        h = x[:, 0]
        if (-W) % m:
            h = F.pad(h, (0, (-W) % m))
        out = self.trunk(h, self.embedding(t, cond, x))
        return out[:, None, :, :W]


def build_unet1d(model_cfg: dict, num_classes: int, n_mels: int) -> MelUNet1d:
    m = model_cfg or {}
    return MelUNet1d(num_classes=num_classes, n_mels=n_mels, channels=int(m.get("channels", 128)),
                     mults=m.get("mults", [1, 2, 2]), res_blocks=int(m.get("res_blocks", 2)),
                     emb_dim=int(m.get("emb_dim", 0)) or None, dropout=float(m.get("dropout", 0.0)))
