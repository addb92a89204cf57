"""A DiffWave network (Kong et al., ICLR 2021, section 3 and figure 2): a non-autoregressive WaveNet
that predicts the noise of a waveform from the noisy waveform, the diffusion step and a mel
spectrogram.

Input: a dense ``State`` with field ``wave`` (B, 1, L); time ``t`` (B,) in [0, 1]; condition
``{"mel": (B, n_mels, frames)}`` in the audio domain's normalised log-mel units ([-1, 1], see
``mel.waveform_to_mel``; frames of an L-sample clip: ``mel.num_frames``). Output: ``{"wave": (B, 1, L)}``.

    x      = ReLU(Conv1x1(wave))                                   C channels
    e      = MLP(sinusoidal(1000 t))                               diffusion-step embedding
    c      = crop_L(Upsampler((mel + 1) / 2))                      one mel vector per sample, [0, 1] units
    layer i (dilation 2 ** (i % cycle)):
        y        = DilatedConv(x + Linear_i(e)) + Conv1x1_i(c)       2C channels
        g        = tanh(y_filter) * sigmoid(y_gate)                  gated activation, C channels
        res, skip = Conv1x1(g)                                       2C -> C + C
        x        = (x + res) / sqrt(2)
    out    = Conv1x1_zero(ReLU(Conv1x1(sum(skip) / sqrt(layers))))

The upsampler is a stack of transposed 2-D convolutions over (mel band, frame) with strides
(1, s_k) whose product equals the mel hop, each symmetric about its input frame, so frame j lands
centred on sample j * hop (the centre of a centred STFT frame); the output (frames * hop samples)
is cropped to the L samples of the waveform.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...core.io import InputError
from ...core.state import State

__all__ = ["DiffWave", "MelUpsampler", "ResidualLayer", "build_diffwave", "upsample_strides",
           "step_embedding", "gated_activation", "linear_interpolation_kernel"]


def upsample_strides(hop_length: int, strides: Sequence[int] | None = None) -> list[int]:
    """The transposed-convolution strides of the mel upsampler: ``strides`` when given (their
    product must equal the hop), else the hop as powers of 4 times one 2 (64 -> [4, 4, 4],
    128 -> [4, 4, 4, 2], 256 -> [4, 4, 4, 4]). A hop that is not a power of two needs explicit strides."""
    hop = int(hop_length)
    if strides:
        s = [int(v) for v in strides]
        if any(v < 1 for v in s) or math.prod(s) != hop:
            raise InputError(f"vocoder: model.upsample_strides={list(strides)} must be positive integers whose "
                             f"product equals the mel hop_length {hop} (product {math.prod(s)})")
        return s
    if hop < 1 or hop & (hop - 1):
        raise InputError(f"vocoder: the mel hop_length {hop} is not a power of two, so it cannot be factored into "
                         "the default upsampler strides (4 and 2); give model.upsample_strides explicitly, e.g. "
                         "[4, 5, 5] for hop 100")
    out = []
    while hop % 4 == 0:
        out.append(4)
        hop //= 4
    if hop == 2:
        out.append(2)
    return out or [1]


def step_embedding(t: torch.Tensor, dim: int = 128, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of the diffusion step n = scale * t (DiffWave eq. in section 3 /
    Vaswani et al.): [sin(n w_j), cos(n w_j)], w_j = 10000 ** (-j / (dim/2 - 1)), j < dim/2."""
    half = dim // 2
    j = torch.arange(half, device=t.device, dtype=torch.float32)
    w = torch.exp(-math.log(10000.0) * j / max(half - 1, 1))
    n = scale * t.to(torch.float32).reshape(-1, 1)
    return torch.cat([torch.sin(n * w), torch.cos(n * w)], dim=1)


def linear_interpolation_kernel(stride: int) -> torch.Tensor:
    """The (2 s + 1)-tap hat 1 - |k - s| / s: a transposed convolution with stride s and this kernel
    interpolates linearly between frames (the upsampler's initial state, so the conditioner starts
    at the mel's own scale instead of a product of small random kernels)."""
    k = torch.arange(2 * stride + 1, dtype=torch.float32)
    return 1.0 - (k - stride).abs() / stride


def gated_activation(y: torch.Tensor) -> torch.Tensor:
    """WaveNet's gated unit: tanh(filter) * sigmoid(gate), the two halves of the channels."""
    filt, gate = y.chunk(2, dim=1)
    return torch.tanh(filt) * torch.sigmoid(gate)


class MelUpsampler(nn.Module):
    """Frames to samples: per stride s, ConvTranspose2d(1, 1, (3, 2 s + 1), stride (1, s),
    padding (1, s), output_padding (0, s - 1)) and a leaky ReLU (0.4). Each input frame i reaches the
    outputs i s - s .. i s + s (symmetric about i s), so frame j lands centred on sample j * hop, as
    a centred STFT frame is; (B, n_mels, frames) -> (B, n_mels, frames * hop). Initialised to
    linear interpolation between frames (``linear_interpolation_kernel``, zero bias)."""

    def __init__(self, strides: Sequence[int]):
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.convs = nn.ModuleList(
            nn.ConvTranspose2d(1, 1, (3, 2 * s + 1), stride=(1, s), padding=(1, s), output_padding=(0, s - 1))
            for s in self.strides)
        for s, conv in zip(self.strides, self.convs):
            nn.init.zeros_(conv.bias)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[0, 0, 1] = linear_interpolation_kernel(s)


    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.unsqueeze(1)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.4)
        return x.squeeze(1)


class ResidualLayer(nn.Module):
    """One DiffWave residual layer (figure 2): step projection, dilated convolution, conditioner
    1x1 convolution, gated activation, residual and skip outputs."""

    def __init__(self, channels: int, n_mels: int, emb_dim: int, dilation: int, kernel_size: int = 3):
        super().__init__()
        self.step_proj = nn.Linear(emb_dim, channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation,
                                 padding=dilation * (kernel_size - 1) // 2)
        self.cond_proj = nn.Conv1d(n_mels, 2 * channels, 1)
        self.out_proj = nn.Conv1d(channels, 2 * channels, 1)
        nn.init.kaiming_normal_(self.dilated.weight)
        nn.init.kaiming_normal_(self.cond_proj.weight)
        nn.init.kaiming_normal_(self.out_proj.weight)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.dilated(x + self.step_proj(emb).unsqueeze(-1)) + self.cond_proj(cond)
        res, skip = self.out_proj(gated_activation(y)).chunk(2, dim=1)
        return (x + res) / math.sqrt(2.0), skip


class DiffWave(nn.Module):
    """The DiffWave noise network on the ``wave`` field, conditioned on ``cond["mel"]``."""

    field = "wave"

    def __init__(self, n_mels: int, hop_length: int, residual_channels: int = 64, layers: int = 30,
                 dilation_cycle: int = 10, step_dim: int = 128, step_hidden: int = 512,
                 upsample: Sequence[int] | None = None, kernel_size: int = 3):
        super().__init__()
        if layers < 1 or dilation_cycle < 1 or residual_channels < 1:
            raise InputError(f"vocoder: need layers >= 1, dilation_cycle >= 1 and residual_channels >= 1 "
                             f"(got {layers}, {dilation_cycle}, {residual_channels})")
        C = int(residual_channels)
        self.n_mels, self.hop = int(n_mels), int(hop_length)
        self.step_dim = int(step_dim)
        self.upsampler = MelUpsampler(upsample_strides(self.hop, upsample))
        self.input_proj = nn.Conv1d(1, C, 1)
        self.step_mlp = nn.Sequential(nn.Linear(self.step_dim, step_hidden), nn.SiLU(),
                                      nn.Linear(step_hidden, step_hidden), nn.SiLU())
        self.layers = nn.ModuleList(ResidualLayer(C, self.n_mels, step_hidden, 2 ** (i % dilation_cycle), kernel_size)
                                    for i in range(int(layers)))
        self.skip_proj = nn.Conv1d(C, C, 1)
        self.output_proj = nn.Conv1d(C, 1, 1)
        nn.init.kaiming_normal_(self.input_proj.weight)
        nn.init.kaiming_normal_(self.skip_proj.weight)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def conditioner(self, mel: torch.Tensor, length: int) -> torch.Tensor:
        """Upsampled mel (B, n_mels, length): one conditioning vector per waveform sample. The
        normalised mel ([-1, 1], -1 = the log floor) is first mapped to DiffWave's [0, 1]
        ((mel + 1) / 2), so that silence is 0 and the leaky ReLUs pass speech unchanged."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"vocoder: expected a mel of shape (B, {self.n_mels}, frames), got {tuple(mel.shape)}")
        if mel.shape[-1] * self.hop < length:
            raise ValueError(f"vocoder: {mel.shape[-1]} mel frames cover {mel.shape[-1] * self.hop} samples, "
                             f"the waveform has {length} (hop {self.hop})")
        return self.upsampler(0.5 * (mel + 1.0))[..., :length]

    def forward_tensor(self, wave: torch.Tensor, t: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        B, _, L = wave.shape
        x = F.relu(self.input_proj(wave))
        emb = self.step_mlp(step_embedding(t.expand(B) if t.numel() == 1 else t, self.step_dim).to(wave.dtype))
        c = self.conditioner(mel.to(wave.dtype), L)
        skips = torch.zeros_like(x)
        for layer in self.layers:
            x, skip = layer(x, emb, c)
            skips = skips + skip
        y = F.relu(self.skip_proj(skips / math.sqrt(len(self.layers))))
        return self.output_proj(y)

    def forward(self, x: State, t: torch.Tensor, cond=None) -> State:
        if not isinstance(cond, dict) or "mel" not in cond:
            raise ValueError("vocoder: the network needs cond={'mel': (B, n_mels, frames)}")
        return x.like({self.field: self.forward_tensor(x[self.field], t, cond["mel"])})


def build_diffwave(model_cfg: dict, n_mels: int, hop_length: int) -> DiffWave:
    """A ``DiffWave`` from the ``model`` table (residual_channels, layers, dilation_cycle, step_dim,
    step_hidden, upsample_strides)."""
    m = model_cfg or {}
    return DiffWave(n_mels, hop_length, residual_channels=int(m.get("residual_channels", 64)),
                    layers=int(m.get("layers", 30)), dilation_cycle=int(m.get("dilation_cycle", 10)),
                    step_dim=int(m.get("step_dim", 128)), step_hidden=int(m.get("step_hidden", 512)),
                    upsample=m.get("upsample_strides") or None)
