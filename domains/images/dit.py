"""A diffusion transformer for the images domain (DiT, Peebles & Xie 2023), with adaLN-Zero blocks.

``ImageDiT.forward(x, c_noise, cond) -> State``: the same contract as ``unet.ImageUNet`` (field
``field`` of shape (B, C, H, W), raw prediction F shaped like it, the null label ``num_classes``,
``cond["lowres"]`` concatenated to the input channels when ``cond_channels > 0``, the
self-conditioning field ``"sc:" + field``).

- the input (image, estimate, low-res image) is zero-padded at the end of each axis to a multiple
  of ``patch`` and cut into patch x patch patches by a conv of that kernel and stride, giving
  (H/patch) x (W/patch) tokens of width ``hidden``, plus a fixed 2-D sin-cos position embedding;
- the conditioning vector: sinusoidal embedding of ``1000 c_noise`` -> MLP, plus the label
  embedding;
- ``depth`` blocks: LayerNorm (no affine) modulated by shift/scale, multi-head self-attention,
  gated residual; the same around an MLP of width ``mlp_ratio * hidden``. Each block's
  shift/scale/gate values (6 x hidden) come from one linear of the conditioning vector that starts
  at zero (adaLN-Zero), so every block starts as the identity;
- a final LayerNorm with adaLN shift/scale and a zero-initialised linear to patch * patch * C,
  unpatchified and cropped back: F = 0 at initialisation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.layers import conditioning_vector
from ...core.state import State
from .unet import ImageConditioning

__all__ = ["ImageDiT", "DiTBlock", "sincos_position_embedding"]


def sincos_position_embedding(hidden: int, grid_h: int, grid_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(grid_h * grid_w, hidden): the first half of the columns embed the row index, the second the
    column index, each as sines then cosines of frequencies 1 to 1/10000 (``hidden`` divisible by 4);
    tokens in row-major order."""
    if hidden % 4:
        raise ValueError(f"sincos_position_embedding: hidden must be divisible by 4, got {hidden}")
    quarter = hidden // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)

    def embed(pos: torch.Tensor) -> torch.Tensor:
        a = pos.to(torch.float64)[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.cat([embed(rows), embed(cols)], dim=1).to(dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) * (1 + scale) + shift, the per-example (B, D) values broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: ``ada`` maps the conditioning vector to shift/scale/gate for the
    attention and the MLP branches; it starts at zero, so the gates do and the block is the identity."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or hidden % heads:
            raise ValueError(f"DiTBlock: hidden={hidden} does not split into {heads} heads")
        self.heads, self.dropout = int(heads), float(dropout)
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = max(1, int(round(hidden * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(width, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(B, N, D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class ImageDiT(ImageConditioning):
    def __init__(self, channels_in: int, num_classes: int = 0, cond_channels: int = 0, self_conditioning: bool = False,
                 patch: int = 2, hidden: int = 192, depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, field: str = "image"):
        super().__init__()
        self.setup_conditioning(channels_in, num_classes, cond_channels, self_conditioning, field)
        patch, hidden, depth, heads = int(patch), int(hidden), int(depth), int(heads)
        if patch < 1 or depth < 0 or hidden < 4 or hidden % 4 or heads < 1 or hidden % heads or mlp_ratio <= 0:
            raise ValueError(f"ImageDiT: need patch >= 1, depth >= 0, hidden a positive multiple of 4 and of heads, "
                             f"mlp_ratio > 0, got patch={patch}, hidden={hidden}, depth={depth}, heads={heads}, "
                             f"mlp_ratio={mlp_ratio}")
        self.patch, self.hidden = patch, hidden
        self.patchify = nn.Conv2d(self.input_channels, hidden, patch, stride=patch)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_emb = nn.Embedding(self.num_classes + 1, hidden) if self.num_classes else None
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, float(mlp_ratio), float(dropout)) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear_out = nn.Linear(hidden, patch * patch * self.channels_in)
        # DiT's initialisation: Xavier-uniform linears, the patch conv as a linear, embeddings N(0, 0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patchify.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patchify.bias)
        for lin in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.label_emb is not None:
            nn.init.normal_(self.label_emb.weight, std=0.02)
        for lin in [b.ada[1] for b in self.blocks] + [self.ada_out[1], self.linear_out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embedding(self, c_noise, cond, x: torch.Tensor) -> torch.Tensor:
        """The conditioning vector (B, hidden): time embedding plus label embedding."""
        return conditioning_vector(self.time_mlp, self.hidden, c_noise, self.label_emb,
                                   self.labels(cond, x.shape[0], x.device), x)

    def forward_tensor(self, x: torch.Tensor, c_noise, cond=None) -> torch.Tensor:
        """(B, input_channels, H, W) -> (B, channels_in, H, W)."""
        B, _, H, W = x.shape
        p = self.patch
        ph, pw = (-H) % p, (-W) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        gh, gw = (H + ph) // p, (W + pw) // p
        tokens = self.patchify(x).flatten(2).transpose(1, 2)  # (B, gh * gw, hidden), row-major
        tokens = tokens + sincos_position_embedding(self.hidden, gh, gw, x.device, tokens.dtype)[None]
        c = self.embedding(c_noise, cond, x)
        for blk in self.blocks:
            tokens = blk(tokens, c)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        out = self.linear_out(modulate(self.norm_out(tokens), shift, scale))  # (B, N, p * p * C)
        C = self.channels_in
        out = out.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, gh * p, gw * p)
        return out[:, :, :H, :W]

    def forward(self, x: State, c_noise: torch.Tensor, cond=None) -> State:
        return x.like({self.field: self.forward_tensor(self.image_input(x, cond), c_noise, cond)})
