"""A class-conditional 2-D U-Net for the images domain (Ho et al. 2020; Dhariwal & Nichol 2021).

``ImageUNet.forward(x, c_noise, cond) -> State``: ``x`` has the field ``field`` (default "image")
of shape (B, C, H, W); ``c_noise`` (B,) is the parameterisation's noise input (t, or EDM's
log(sigma)/4); the output is the raw prediction F, shaped like the input, in a State of the same
layout. The last conv starts at zero, so F = 0 at initialisation.

- time: sinusoidal embedding of ``1000 c_noise`` -> MLP; label: ``nn.Embedding(num_classes + 1)``
  where index ``num_classes`` is the null label (classifier-free guidance; also used when ``cond``
  is None, has no label, or a label is negative), added to the time embedding; the sum feeds every
  residual block as a scale/shift.
- ``cond["lowres"]`` (B, cond_channels, H, W), e.g. an upsampled low-resolution image for SR3-style
  super-resolution (Saharia et al. 2021), is concatenated to the input channels when
  ``cond_channels > 0`` (it is then required).
- self-conditioning (Chen et al. 2022): with ``self_conditioning=True`` the field
  ``"sc:" + field`` (the previous x0 estimate, same shape) is concatenated too; zeros when absent.
- levels: one per entry of ``mults`` (width ``channels * mult``), ``res_blocks`` residual blocks
  each, downsampling by 2 between levels; images whose sides are not multiples of
  ``2 ** (levels - 1)`` are zero-padded at the end of each axis and the output is cropped back.
- self-attention (multi-head, GroupNorm, zero-initialised output projection, so each attention
  block starts as the identity) after every residual block of each level whose feature map's
  longer side is <= ``attention_res`` (0: none), and in the middle (residual, attention,
  residual). The feature map sizes follow from ``image_size`` (the training images' (H, W), or one
  int for square images); without it the levels are unknown and only the middle has attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.layers import ResBlock, build_unet_levels, conditioning_vector, group_count, label_indices
from ...core.state import State

__all__ = ["ImageUNet", "SelfAttention2d", "attention_levels"]

SELF_COND = "sc:"  # the prefix of the self-conditioning fields (core.parameterisation.SELF_COND)


class ImageConditioning(nn.Module):
    """What the image networks share: the input channels (image, self-conditioning estimate,
    low-resolution image) and the label indices with the null label."""

    def setup_conditioning(self, channels_in: int, num_classes: int, cond_channels: int, self_conditioning: bool,
                           field: str) -> None:
        name = type(self).__name__
        if int(channels_in) < 1 or int(num_classes) < 0 or int(cond_channels) < 0:
            raise ValueError(f"{name}: need channels_in >= 1, num_classes >= 0 and cond_channels >= 0, got "
                             f"channels_in={channels_in}, num_classes={num_classes}, cond_channels={cond_channels}")
        self.channels_in, self.num_classes = int(channels_in), int(num_classes)
        self.cond_channels, self.self_conditioning = int(cond_channels), bool(self_conditioning)
        self.field = str(field)

    @property
    def input_channels(self) -> int:
        """Channels the trunk sees: the image, its self-conditioning estimate, the low-res image."""
        return self.channels_in * (2 if self.self_conditioning else 1) + self.cond_channels

    def labels(self, cond, batch: int, device) -> torch.Tensor | None:
        """Label indices (B,) with the null label for None / missing / negative labels (None when
        the network is unconditional)."""
        return label_indices(cond, self.num_classes, batch, device, type(self).__name__)

    def image_input(self, x: State, cond) -> torch.Tensor:
        """(B, input_channels, H, W): the image, then "sc:<field>" (or zeros), then cond["lowres"]."""
        name = type(self).__name__
        if self.field not in x:
            raise ValueError(f"{name}: the input state has no field '{self.field}' (it has {x.names})")
        img = x[self.field]
        if img.dim() != 4 or img.shape[1] != self.channels_in:
            raise ValueError(f"{name}: expected '{self.field}' of shape (B, {self.channels_in}, H, W), "
                             f"got {tuple(img.shape)}")
        parts = [img]
        if self.self_conditioning:
            sc = x.fields.get(SELF_COND + self.field)
            if sc is None:
                sc = torch.zeros_like(img)
            elif sc.shape != img.shape:
                raise ValueError(f"{name}: '{SELF_COND + self.field}' has shape {tuple(sc.shape)}, the image "
                                 f"{tuple(img.shape)}")
            parts.append(sc.to(img.dtype))
        if self.cond_channels:
            low = cond.get("lowres") if isinstance(cond, dict) else None
            if low is None:
                raise ValueError(f"{name}: built with cond_channels={self.cond_channels} (super-resolution), so the "
                                 f"condition must hold 'lowres', a (B, {self.cond_channels}, H, W) image at the "
                                 f"output's resolution; got {'no condition' if cond is None else 'none'}")
            low = torch.as_tensor(low, device=img.device)
            want = (img.shape[0], self.cond_channels) + tuple(img.shape[2:])
            if tuple(low.shape) != want:
                raise ValueError(f"{name}: cond['lowres'] has shape {tuple(low.shape)}, expected {want} "
                                 "(upsample the low-resolution image to the output's size)")
            parts.append(low.to(img.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else img


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H x W positions of each example: GroupNorm, a 1x1 conv to
    queries/keys/values, scaled dot-product attention, a zero-initialised 1x1 output projection and
    a residual (so the block starts as the identity)."""

    def __init__(self, ch: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or ch % heads:
            raise ValueError(f"SelfAttention2d: {ch} channels do not split into {heads} heads")
        self.heads, self.dropout = int(heads), float(dropout)
        self.norm = nn.GroupNorm(group_count(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def attention_levels(image_size, levels: int, attention_res: int) -> list[bool]:
    """Per level: whether its feature map's longer side is <= ``attention_res`` (0: never), for
    images of ``image_size`` ((H, W) or one int; None: unknown, no level) padded to a multiple of
    ``2 ** (levels - 1)``."""
    if not attention_res or image_size is None:
        return [False] * levels
    size = (int(image_size),) * 2 if isinstance(image_size, (int, float)) else tuple(int(s) for s in image_size)
    m = 2 ** (levels - 1)
    longer = max(-(-s // m) * m for s in size)
    return [longer // 2**i <= attention_res for i in range(levels)]


class ImageUNet(ImageConditioning):
    def __init__(self, channels_in: int, num_classes: int = 0, cond_channels: int = 0, self_conditioning: bool = False,
                 channels: int = 64, mults=(1, 2, 2), res_blocks: int = 2, attention_res: int = 16, heads: int = 4,
                 emb_dim: int | None = None, dropout: float = 0.0, field: str = "image", image_size=None):
        super().__init__()
        self.setup_conditioning(channels_in, num_classes, cond_channels, self_conditioning, field)
        mults = [int(m) for m in mults]
        channels, res_blocks, heads = int(channels), int(res_blocks), int(heads)
        if not mults or min(mults) < 1 or channels < 1 or res_blocks < 1 or heads < 1 or int(attention_res) < 0:
            raise ValueError(f"ImageUNet: need channels >= 1, res_blocks >= 1, heads >= 1, attention_res >= 0 and "
                             f"positive mults, got channels={channels}, mults={mults}, res_blocks={res_blocks}, "
                             f"heads={heads}, attention_res={attention_res}")
        self.levels, self.temb_dim = len(mults), channels
        self.attention = attention_levels(image_size, self.levels, int(attention_res))
        emb_dim = int(emb_dim or 4 * channels)
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None
        self.conv_in = nn.Conv2d(self.input_channels, channels, 3, padding=1)

        def block(cin: int, cout: int, attend: bool) -> nn.ModuleList:
            mods = [ResBlock(cin, cout, emb_dim, dropout)]
            if attend:
                mods.append(SelfAttention2d(cout, heads, dropout))
            return nn.ModuleList(mods)

        def middle(ch: int) -> nn.ModuleList:
            return nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), SelfAttention2d(ch, heads, dropout),
                                  ResBlock(ch, ch, emb_dim, dropout)])

        ch = build_unet_levels(self, channels, mults, res_blocks,
                               lambda cin, cout, level: block(cin, cout, self.attention[level]), nn.Conv2d, middle)
        self.norm_out = nn.GroupNorm(group_count(ch), ch)
        self.conv_out = nn.Conv2d(ch, self.channels_in, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embedding(self, c_noise, cond, x: torch.Tensor) -> torch.Tensor:
        """Time embedding plus label embedding (B, emb_dim) for the batch ``x``."""
        return conditioning_vector(self.time_mlp, self.temb_dim, c_noise, self.label_emb,
                                   self.labels(cond, x.shape[0], x.device), x)

    @staticmethod
    def run_block(mods: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = mods[0](h, emb)
        for m in mods[1:]:
            h = m(h)
        return h

    def forward_tensor(self, x: torch.Tensor, c_noise, cond=None) -> torch.Tensor:
        """(B, input_channels, H, W) -> (B, channels_in, H, W)."""
        _, _, H, W = x.shape
        m = 2 ** (self.levels - 1)
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        emb = self.embedding(c_noise, cond, x)
        h = self.conv_in(x)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for mods in blocks:
                h = self.run_block(mods, h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for j, blocks in enumerate(self.up):
            for mods in blocks:
                h = self.run_block(mods, torch.cat([h, hs.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[:, :, :H, :W]

    def forward(self, x: State, c_noise: torch.Tensor, cond=None) -> State:
        return x.like({self.field: self.forward_tensor(self.image_input(x, cond), c_noise, cond)})
