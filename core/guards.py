"""Guards of the training step: the EMA of the weights, gradient clipping (fixed and adaptive),
the fused finite check of all gradients, and the divergence error. Device tensors only: no host
sync on CUDA."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .io import InputError
from .train_config import ema_decay_at

_CLIP_MEAN, _CLIP_STD = 1.5, 2.0  # adaptive threshold = 1.5 * mean + 2 * std of recent norms


class TrainingDiverged(InputError):
    """Too many consecutive steps with a non-finite loss or gradient (or non-finite weights)."""


class EMA:
    """Exponential moving average of parameters: ema <- ema + (1 - d_n)(theta - ema), skipped on
    bad steps (all on the device: no host sync)."""

    def __init__(self, params: Sequence[Tensor], ema_params: Sequence[Tensor], decay: float, warmup: float,
                 device=None):
        self.decay, self.warmup = float(decay), float(warmup)
        self.updates = torch.zeros((), dtype=torch.float64, device=device)  # good updates so far
        groups: dict[torch.dtype, tuple[list, list]] = {}
        for p, e in zip(params, ema_params):
            g = groups.setdefault(e.dtype, ([], []))
            g[0].append(e)
            g[1].append(p)
        self._groups = groups

    @torch.no_grad()
    def update(self, good: bool | Tensor = True) -> None:
        """One update, a no-op when ``good`` is false: a bool (decided on the host), or a 0-dim bool
        tensor on the device (decided there: no host sync)."""
        if not isinstance(good, Tensor):
            if good:
                self.updates += 1
                w = 1.0 - ema_decay_at(float(self.updates), self.decay, self.warmup)
                for ema, params in self._groups.values():
                    torch._foreach_lerp_(ema, params, w)
            return
        g = good.to(torch.float64)
        n = self.updates + g
        d = n / (n + self.warmup) if self.warmup > 0 else torch.ones_like(n)
        w = (1.0 - d.clamp(max=self.decay)) * g
        for dtype, (ema, params) in self._groups.items():
            torch._foreach_lerp_(ema, params, w.to(dtype))
        self.updates = n


class AdaptiveClip:
    """Threshold = 1.5 mean + 2 std (unbiased) of the pre-clip gradient norms of the last ``window``
    good steps; infinite until ``start`` good steps were seen. Device tensors only."""

    def __init__(self, window: int = 50, start: int = 10, device=None):
        self.window, self.start = int(window), int(start)
        self.history = torch.zeros(self.window, dtype=torch.float64, device=device)
        self.pushed = torch.zeros((), dtype=torch.long, device=device)  # good norms pushed so far
        self._slots = torch.arange(self.window, device=device)

    def threshold(self) -> Tensor:
        n = self.pushed.clamp(max=self.window)
        valid = (self._slots < n).to(torch.float64)
        nf = n.to(torch.float64).clamp(min=1.0)
        mean = (self.history * valid).sum() / nf
        var = (((self.history - mean) * valid) ** 2).sum() / (nf - 1.0).clamp(min=1.0)
        thr = _CLIP_MEAN * mean + _CLIP_STD * var.sqrt()
        return torch.where(self.pushed >= self.start, thr, torch.full_like(thr, math.inf))

    def push(self, norm: Tensor, good: bool | Tensor = True) -> None:
        """Record a pre-clip norm, unless ``good`` (a bool, or a 0-dim bool tensor: no host sync) is false."""
        if not isinstance(good, Tensor) and not good:
            return
        pos = (self.pushed % self.window).view(1)
        norm = norm.detach().to(torch.float64).reshape(1)
        if isinstance(good, Tensor):
            norm = torch.where(good, norm, self.history.index_select(0, pos))
        self.history.index_copy_(0, pos, norm)
        self.pushed += good.to(torch.long) if isinstance(good, Tensor) else 1

    def state(self) -> dict[str, Tensor]:
        return {"clip/history": self.history, "clip/pushed": self.pushed}

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        if tensors["clip/history"].shape != self.history.shape:
            raise InputError(f"adaptive-clip history has {tensors['clip/history'].numel()} entries, "
                             f"the config asks for a window of {self.window}")
        self.history.copy_(tensors["clip/history"])
        self.pushed.copy_(tensors["clip/pushed"])


def total_norm(grads: Sequence[Tensor], device) -> Tensor:
    """L2 norm of all gradients, float64 (NaN or inf when any entry is): no host sync."""
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch._foreach_norm(grads)
    if len({n.dtype for n in norms}) > 1:
        norms = [n.to(torch.float64) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms)).to(torch.float64)


def by_dtype(tensors: Sequence[Tensor]) -> dict[torch.dtype, list[Tensor]]:
    out: dict[torch.dtype, list[Tensor]] = {}
    for x in tensors:
        out.setdefault(x.dtype, []).append(x)
    return out


def finite_params(params: Sequence[Tensor]) -> bool:
    if not params:
        return True
    norms = torch._foreach_norm([p.detach() for p in params])
    return bool(torch.isfinite(torch.stack([n.to(torch.float64) for n in norms])).all())
