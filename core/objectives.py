"""Training objectives: per-field regression losses with masks, time sampling, loss weightings and
condition dropout for classifier-free guidance.

Every weighting is defined on the x0 error and converted to the network's own prediction space:
if prediction_error = b(t) * x0_error (``x0_error_gain``), a weight w(t) on |x0 error|^2 becomes
w(t) / b(t)^2 on |prediction error|^2.
  uniform   plain MSE in the prediction's own space (w = b^2)
  snr       w = SNR = exp(lambda)            (= eps-MSE, Ho et al. 2020)
  min_snr   w = min(SNR, gamma)             (Hang et al. 2023)
  edm       w = (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2   (Karras et al. 2022)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from .parameterisation import Coefficients, Denoiser, EDMPreconditioning, coefficients, target, x0_error_gain
from .process import Process, check_t
from .state import State, expand_mask

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm")
TIME_SAMPLERS = ("uniform", "discrete", "lognormal", "logit_normal")


def sample_time(kind: str, batch: int, process: Process, *, generator: torch.Generator | None = None,
                device=None, t_min: float = 1e-3, timesteps: int = 1000, p_mean: float = -1.2,
                p_std: float = 1.2) -> Tensor:
    """Training times (B,) float64 in [0, 1].

    uniform: U[t_min, 1]. discrete: k/T with k uniform in {1..T} (EDM's integer steps).
    lognormal: ln sigma~ ~ N(p_mean, p_std^2), mapped to t (EDM). logit_normal: t = sigmoid(N(p_mean, p_std^2)) (SD3)."""
    if kind == "uniform":
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        t = t_min + (1.0 - t_min) * u
    elif kind == "discrete":
        t = torch.randint(1, timesteps + 1, (batch,), generator=generator).to(torch.float64) / timesteps
    elif kind == "lognormal":
        z = torch.randn(batch, generator=generator, dtype=torch.float64)
        t = process.t_of_sigma_tilde(torch.exp(p_mean + p_std * z)).clamp(t_min, 1.0)
    elif kind == "logit_normal":
        z = torch.randn(batch, generator=generator, dtype=torch.float64)
        t = torch.sigmoid(p_mean + p_std * z).clamp(t_min, 1.0)
    else:
        raise ValueError(f"unknown time sampler '{kind}'; known: {TIME_SAMPLERS}")
    return t.to(device) if device is not None else t


def diffuse(x0: State, t: Tensor, eps: State, process: Process) -> State:
    """x_t = alpha(t) x0 + sigma(t) eps (eps already in each field's space)."""
    t64 = t.to(torch.float64)
    return (x0.scale(process.alpha(t64)) + eps.scale(process.sigma(t64))).project()


def drop_condition(cond: Mapping[str, Tensor], p: float, null: Mapping[str, Any], *,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Classifier-free guidance training: replace each example's condition by ``null[key]`` with
    probability p (the same examples are dropped for every key)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must lie in [0, 1], got {p}")
    if not cond:
        return dict(cond)
    batch = next(iter(cond.values())).shape[0]
    drop = torch.rand(batch, generator=generator) < p
    out = {}
    for k, v in cond.items():
        if k not in null:
            raise ValueError(f"no null value given for condition '{k}'")
        d = drop.to(v.device).reshape(-1, *([1] * (v.dim() - 1)))
        out[k] = torch.where(d, torch.as_tensor(null[k], dtype=v.dtype, device=v.device), v)
    return out


@dataclass
class DiffusionObjective:
    """Weighted regression loss of a ``Denoiser`` on clean states.

    Loss per example = w(t) * mean over real entries (all diffused fields) of |pred - target|^2;
    the batch loss is the mean over examples. Fields listed in ``field_weights`` are scaled."""

    process: Process
    prediction: str = "eps"
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    time_sampler: str = "uniform"
    t_min: float = 1e-3
    timesteps: int = 1000
    field_weights: Mapping[str, float] | None = None

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{self.weighting}'; known: {WEIGHTINGS}")
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler '{self.time_sampler}'; known: {TIME_SAMPLERS}")

    def x0_weight(self, t: Tensor) -> Tensor:
        """w(t) on the x0 error, (B,) float64 (None-equivalent for 'uniform')."""
        t64 = t.to(torch.float64)
        snr = torch.exp(self.process.log_snr(t64))
        if self.weighting == "snr":
            return snr
        if self.weighting == "min_snr":
            return torch.clamp(snr, max=self.min_snr_gamma)
        if self.weighting == "edm":
            return EDMPreconditioning(self.sigma_data).loss_weight(self.process.sigma_tilde(t64))
        raise ValueError("uniform weighting has no x0 weight")

    def sample_t(self, batch: int, generator=None, device=None) -> Tensor:
        return sample_time(self.time_sampler, batch, self.process, generator=generator, device=device,
                           t_min=self.t_min, timesteps=self.timesteps)

    def per_example(self, denoiser: Denoiser, x0: State, t: Tensor, eps: State, cond: Any = None) -> Tensor:
        """Weighted loss per example (B,) for given times and noise."""
        check_t(t)
        x_t = diffuse(x0, t, eps, self.process)
        preconditioned = getattr(denoiser, "preconditioning", None) is not None
        if preconditioned:
            pred = denoiser(x_t, t.to(x0.dtype), cond)
        else:
            pred = x_t.like(denoiser.raw(x_t, t.to(x0.dtype), cond).fields).project()
        prediction = "x0" if preconditioned else denoiser.prediction
        total = torch.zeros(x0.batch_size, dtype=torch.float64, device=x0.device)
        entries = torch.zeros_like(total)
        for k in x0.fields:
            c: Coefficients = coefficients(self.process, t, x0, k)
            err = (pred[k] - target(prediction, x0[k], eps[k], c)).pow(2)
            if k in x0.masks:
                err = err * expand_mask(x0.masks[k], err).to(err.dtype)
            fw = (self.field_weights or {}).get(k, 1.0)
            total = total + fw * x0.layout(k).sum_per_example(err).to(torch.float64)
            entries = entries + x0.layout(k).counts(x0[k])
        loss = total / entries.clamp_min(1)
        if self.weighting != "uniform":
            gain = _per_example_gain(prediction, self.process, t)
            loss = loss * self.x0_weight(t).to(loss.device) / gain.to(loss.device) ** 2
        return loss

    def __call__(self, denoiser: Denoiser, x0: State, cond: Any = None, *, generator: torch.Generator | None = None,
                 t: Tensor | None = None, eps: State | None = None) -> Tensor:
        """Scalar training loss; draws t and noise from ``generator`` unless given."""
        x0.check_layout()
        if t is None:
            t = self.sample_t(x0.batch_size, generator=generator, device=x0.device)
        if eps is None:
            eps = x0.map(lambda k, v: x0.space(k).noise(
                torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device), x0.layout(k)))
        return self.per_example(denoiser, x0, t, eps, cond).mean()


def _per_example_gain(prediction: str, process: Process, t: Tensor) -> Tensor:
    """b(t) for scalar per-example coefficients."""
    t64 = t.to(torch.float64)
    c = Coefficients(process.alpha(t64), process.sigma(t64), process.d_alpha(t64), process.d_sigma(t64))
    return x0_error_gain(prediction, c)

