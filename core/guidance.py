"""Guidance and constraints: wrappers that keep the one denoiser contract, and constraints that pin
known parts of the state during sampling.

- ClassifierFreeGuidance: D_w = (1 + w) D(x, t, c) - w D(x, t, null)   (Ho & Salimans 2022); w = 0 is
  the conditional model.
- ClassifierGuidance: score + scale * grad log p(y | x_t), i.e. D += scale * sigma^2/alpha * grad
  (Dhariwal & Nichol 2021), for any differentiable log p(y | x_t, t).
- Inpaint: replacement (Song et al. 2021 / "known parts noised to the current time"), and RePaint
  resampling (Lugmayr et al. 2022) through ``sample_repaint``.
- SDEdit: start from data noised to t0 and sample from there (Meng et al. 2022).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .noise import ExampleNoise
from .process import Process
from .samplers import Callback, _after_step, _eval, _finish, _need_noise, _start, ddpm_posterior
from .state import State, expand_mask


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
        shift = x.like({k: (g if g is not None else torch.zeros_like(x[k])) for k, g in zip(leaves, grads)})
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
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(self.process.alpha(tt)), float(self.process.sigma(tt))
        z = _need_noise(noise, "inpainting").normal(self.known)
        return self.known * a + z * s

    def _merge(self, x: State, known: State) -> State:
        out = dict(x.fields)
        for k, m in self.mask.items():
            out[k] = torch.where(expand_mask(m, x[k]).to(x[k].device), known[k].to(x[k]), x[k])
        return x.like(out)

    def __call__(self, x: State, t: float, noise: ExampleNoise) -> State:
        return self._merge(x, self.noised_known(t, noise))

    def finish(self, x: State) -> State:
        return self._merge(x, self.known)


def sample_repaint(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint: Inpaint | None = None,
                   callback: Callback | None = None, final_denoise: bool = True, resample: int = 10) -> State:
    """RePaint (Lugmayr et al. 2022, Alg. 1, jump length 1): each ancestral step is repeated
    ``resample`` times; between repeats the merged state is diffused back one step,
    x_t = (a_t/a_n) x_n + sqrt(s_t^2 - (a_t/a_n)^2 s_n^2) z, so the free part harmonises with the known part."""
    noise = _need_noise(noise, "RePaint")
    if constraint is None:
        raise ValueError("RePaint needs constraint=Inpaint(...)")
    if resample < 1:
        raise ValueError("resample must be >= 1")
    sched, x = _start(denoiser, x, grid, constraint, noise)
    for i in range(sched.steps):
        cx, cd, std = ddpm_posterior(sched, i)
        a, s, a_n, s_n = sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
        for u in range(resample):
            D = _eval(denoiser, x, sched.t[i], cond)
            z = noise.normal(x)
            x_n = x * cx + D * cd
            if std > 0:
                x_n = x_n + z * std
            x_n = constraint(x_n.project(), sched.t[i + 1], noise)
            if u < resample - 1 and a_n > 0:
                back = a / a_n
                jump = max(0.0, s**2 - back**2 * s_n**2) ** 0.5
                x = (x_n * back + noise.normal(x_n) * jump).project()
        x = _after_step(x_n, i, sched, D, None, noise, callback)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


def sdedit_start(x0: State, t0: float, process: Process, noise: ExampleNoise) -> State:
    """SDEdit's starting point: the data noised to time t0, alpha(t0) x0 + sigma(t0) z."""
    if not 0.0 < t0 <= 1.0:
        raise ValueError(f"SDEdit start time t0 must lie in (0, 1], got {t0}")
    tt = torch.tensor(t0, dtype=torch.float64)
    return (x0 * float(process.alpha(tt)) + noise.normal(x0) * float(process.sigma(tt))).project()
