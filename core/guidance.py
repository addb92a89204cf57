"""Guidance and constraints: wrappers that keep the one denoiser contract, and constraints that pin
known parts of the state during sampling.

- ClassifierFreeGuidance: D_w = (1 + w) D(x, t, c) - w D(x, t, null)   (Ho & Salimans 2022); w = 0 is
  the conditional model.
- ClassifierGuidance: score + scale * grad log p(y | x_t), i.e. D += scale * sigma^2/alpha * grad
  (Dhariwal & Nichol 2021), for any differentiable log p(y | x_t, t).
- Inpaint: replacement (Song et al. 2021 / "known parts noised to the current time"), for every
  sampler, and RePaint resampling (Lugmayr et al. 2022) through ``samplers.sample_repaint``.
- SDEdit: start from data noised to t0 and sample from there (Meng et al. 2022).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .noise import ExampleNoise, need_noise
from .process import Process
from .spaces import expand_mask
from .state import State


class ClassifierFreeGuidance(torch.nn.Module):
    """D_w(x, t, c) = (1 + w) D(x, t, c) - w D(x, t, null)."""

    def __init__(self, denoiser, weight: float, null_cond: Any = None):
        super().__init__()
        self.denoiser = denoiser
        self.process = denoiser.process
        self.weight = float(weight)
        self.null_cond = null_cond

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        d_cond = self.denoiser(x, t, cond)
        if self.weight == 0.0:
            return d_cond
        d_null = self.denoiser(x, t, self.null_cond)
        return (d_cond * (1.0 + self.weight) - d_null * self.weight).project()


LogProb = Callable[[State, Tensor, Any], Tensor]


class ClassifierGuidance(torch.nn.Module):
    """x0-hat shifted by scale * sigma^2 / alpha * grad_x log p(y | x_t, t).

    ``log_prob(x, t, cond) -> (B,)`` is any differentiable classifier of the noisy state."""

    def __init__(self, denoiser, log_prob: LogProb, scale: float = 1.0):
        super().__init__()
        self.denoiser = denoiser
        self.process = denoiser.process
        self.log_prob = log_prob
        self.scale = float(scale)

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        D = self.denoiser(x, t, cond)
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in x.fields.items()}
            lp = self.log_prob(x.like(leaves), t, cond)
            grads = torch.autograd.grad(lp.sum(), list(leaves.values()), allow_unused=True)
        t64 = t.to(torch.float64)
        gain = self.scale * self.process.sigma(t64) ** 2 / self.process.alpha(t64)
        shift = x.like({k: (g if g is not None and not x.space(k).categorical else torch.zeros_like(x[k]))
                        for k, g in zip(leaves, grads)})
        return (D + shift.project().scale(gain)).project()


class Inpaint:
    """Pin known entries of any field: after every step the known entries are replaced by the known
    data noised to the current time, alpha(t) x0 + sigma(t) z, and at the end set exactly to x0.

    ``known``: a state with the known values (any values where unknown); ``mask``: field name ->
    bool tensor shaped like the field, True where the value is known. Fields without a mask are free.
    """

    def __init__(self, known: State, mask: Mapping[str, Tensor], process: Process):
        for k, m in mask.items():
            if k not in known.fields:
                raise ValueError(f"inpainting mask given for unknown field '{k}'")
            if m.dtype != torch.bool:
                raise ValueError(f"inpainting mask of field '{k}' must be bool, got {m.dtype}")
            try:
                torch.broadcast_shapes(tuple(expand_mask(m, known[k]).shape), tuple(known[k].shape))
            except RuntimeError:
                raise ValueError(f"inpainting mask of field '{k}' has shape {tuple(m.shape)}, field has {tuple(known[k].shape)}") from None
        self.known = known
        self.mask = dict(mask)
        self.process = process

    def noised_known(self, t: float, noise: ExampleNoise) -> State:
        """The known data noised to time t (a categorical field: masked with probability t)."""
        from .objectives import diffuse

        z = need_noise(noise, "inpainting").normal(self.known)
        tt = torch.full((self.known.batch_size,), float(t), dtype=torch.float64, device=self.known.device)
        return diffuse(self.known, tt, z, self.process)

    def _merge(self, x: State, known: State) -> State:
        out = dict(x.fields)
        for k, m in self.mask.items():
            out[k] = torch.where(expand_mask(m, x[k]).to(x[k].device), known[k].to(x[k]), x[k])
        return x.like(out)

    def __call__(self, x: State, t: float, noise: ExampleNoise) -> State:
        return self._merge(x, self.noised_known(t, noise))

    def finish(self, x: State) -> State:
        return self._merge(x, self.known)


def sdedit_start(x0: State, t0: float, process: Process, noise: ExampleNoise) -> State:
    """SDEdit's starting point: the data noised to time t0, alpha(t0) x0 + sigma(t0) z."""
    if not 0.0 < t0 <= 1.0:
        raise ValueError(f"SDEdit start time t0 must lie in (0, 1], got {t0}")
    tt = torch.tensor(t0, dtype=torch.float64)
    return (x0 * float(process.alpha(tt)) + noise.normal(x0) * float(process.sigma(tt))).project()
