"""What a network predicts and the exact conversions between predictions and the score.

With x_t = alpha x0 + sigma eps:
  eps       noise
  x0        clean data
  v         alpha eps - sigma x0                      (Salimans & Ho 2022)
  velocity  d x_t / dt = alpha' x0 + sigma' eps       (flow matching / rectified flow)
  score     grad log p_t(x_t) = -eps / sigma
All functions take tensors already broadcast (per-example scalars expanded to the field's rank).

Samplers see ONE contract (``Denoiser``): (x_t, t, cond) -> x0-hat. Conversions and EDM's
preconditioning live in the wrapper, never in a sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from .process import Process
from .state import State

PREDICTIONS = ("eps", "x0", "v", "velocity")


def eps_from_x0(x_t, x0, alpha, sigma):
    """eps = (x_t - alpha x0) / sigma."""
    return (x_t - alpha * x0) / sigma


def x0_from_eps(x_t, eps, alpha, sigma):
    """x0 = (x_t - sigma eps) / alpha."""
    return (x_t - sigma * eps) / alpha


def v_from(x0, eps, alpha, sigma):
    """v = alpha eps - sigma x0."""
    return alpha * eps - sigma * x0


def x0_from_v(x_t, v, alpha, sigma):
    """x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)."""
    return (alpha * x_t - sigma * v) / (alpha**2 + sigma**2)


def eps_from_v(x_t, v, alpha, sigma):
    """eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)."""
    return (sigma * x_t + alpha * v) / (alpha**2 + sigma**2)


def velocity_from(x0, eps, d_alpha, d_sigma):
    """u = alpha' x0 + sigma' eps."""
    return d_alpha * x0 + d_sigma * eps


def x0_from_velocity(x_t, u, alpha, sigma, d_alpha, d_sigma):
    """Solve x_t = alpha x0 + sigma eps, u = alpha' x0 + sigma' eps for x0."""
    return (d_sigma * x_t - sigma * u) / (d_sigma * alpha - sigma * d_alpha)


def eps_from_velocity(x_t, u, alpha, sigma, d_alpha, d_sigma):
    return (alpha * u - d_alpha * x_t) / (d_sigma * alpha - sigma * d_alpha)


def score_from_eps(eps, sigma):
    """grad log p_t = -eps / sigma."""
    return -eps / sigma


def eps_from_score(score, sigma):
    return -sigma * score


@dataclass(frozen=True)
class Coefficients:
    """alpha, sigma and their derivatives, broadcast to one field."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def coefficients(process: Process, t: Tensor, state: State, name: str) -> Coefficients:
    x = state[name]
    tt = t.to(torch.float64)
    parts = (process.alpha(tt), process.sigma(tt), process.d_alpha(tt), process.d_sigma(tt))
    a, s, da, ds = (state.expand(p, name).to(x.dtype) for p in parts)
    return Coefficients(a, s, da, ds)


def target(prediction: str, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    """The regression target of a network predicting ``prediction``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from(x0, eps, c.alpha, c.sigma)
    if prediction == "velocity":
        return velocity_from(x0, eps, c.d_alpha, c.d_sigma)
    raise ValueError(f"unknown prediction '{prediction}'; known: {PREDICTIONS}")


def to_x0(prediction: str, out: Tensor, x_t: Tensor, c: Coefficients) -> Tensor:
    """Convert a network output of type ``prediction`` to x0-hat."""
    if prediction == "eps":
        return x0_from_eps(x_t, out, c.alpha, c.sigma)
    if prediction == "x0":
        return out
    if prediction == "v":
        return x0_from_v(x_t, out, c.alpha, c.sigma)
    if prediction == "velocity":
        return x0_from_velocity(x_t, out, c.alpha, c.sigma, c.d_alpha, c.d_sigma)
    raise ValueError(f"unknown prediction '{prediction}'; known: {PREDICTIONS}")


def x0_error_gain(prediction: str, c: Coefficients) -> Tensor:
    """|d(prediction error) / d(x0 error)| at fixed x_t: the factor b with pred_err = b * x0_err."""
    if prediction == "eps":
        return c.alpha / c.sigma
    if prediction == "x0":
        return torch.ones_like(c.alpha)
    if prediction == "v":
        return (c.alpha**2 + c.sigma**2) / c.sigma
    if prediction == "velocity":
        return (c.d_alpha - c.d_sigma * c.alpha / c.sigma).abs()
    raise ValueError(f"unknown prediction '{prediction}'; known: {PREDICTIONS}")


# ----------------------------------------------------------------------------- EDM preconditioning


@dataclass(frozen=True)
class EDMPreconditioning:
    """Karras et al. 2022, Table 1, in terms of the VE-equivalent sigma~ = sigma/alpha and x~ = x/alpha:
    D(x~) = c_skip x~ + c_out F(c_in x~, c_noise)."""

    sigma_data: float = 0.5

    def c_skip(self, s):
        """sigma_data^2 / (s^2 + sigma_data^2)."""
        return self.sigma_data**2 / (s**2 + self.sigma_data**2)

    def c_out(self, s):
        """s sigma_data / sqrt(s^2 + sigma_data^2)."""
        return s * self.sigma_data / torch.sqrt(s**2 + self.sigma_data**2)

    def c_in(self, s):
        """1 / sqrt(s^2 + sigma_data^2)."""
        return 1.0 / torch.sqrt(s**2 + self.sigma_data**2)

    def c_noise(self, s):
        """log(s) / 4."""
        return 0.25 * torch.log(s)

    def loss_weight(self, s):
        """lambda(sigma) = (s^2 + sigma_data^2) / (s sigma_data)^2 on the x0 error."""
        return (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2


# ----------------------------------------------------------------------------- the one contract


class DenoiserFn(Protocol):
    """What every sampler sees: x0-hat for (x_t, t, cond); t is a (B,) tensor in [0, 1]."""

    process: Process

    def __call__(self, x: State, t: Tensor, cond: Any = None) -> State: ...


Network = Callable[[State, Tensor, Any], State]


class Denoiser(torch.nn.Module):
    """Wrap a network into the x0-hat contract.

    ``network(x_in, time_in, cond) -> State`` of raw predictions for the diffused fields. Without
    preconditioning the network sees (x_t, t); with ``EDMPreconditioning`` it sees
    (c_in x~, c_noise(sigma~)) and predicts F, with D = c_skip x~ + c_out F. The output is
    projected into each field's space.
    """

    def __init__(self, network: Network, process: Process, prediction: str = "eps",
                 preconditioning: EDMPreconditioning | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; known: {PREDICTIONS}")
        if preconditioning is not None and prediction != "x0":
            raise ValueError("EDM preconditioning wraps an x0 (D) prediction; use prediction='x0'")
        self.network = network
        self.process = process
        self.prediction = prediction
        self.preconditioning = preconditioning

    def raw(self, x: State, t: Tensor, cond: Any = None) -> State:
        """The network's own output for (x_t, t)."""
        if self.preconditioning is None:
            return self.network(x, t, cond)
        p = self.preconditioning
        s = self.process.sigma_tilde(t.to(torch.float64))
        scale = (p.c_in(s) / self.process.alpha(t.to(torch.float64))).to(x.dtype)
        return self.network(x.scale(scale), p.c_noise(s).to(t.dtype), cond)

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        out = self.raw(x, t, cond)
        if self.preconditioning is not None:
            p = self.preconditioning
            t64 = t.to(torch.float64)
            s = self.process.sigma_tilde(t64)
            a = self.process.alpha(t64)
            skip = (p.c_skip(s) / a).to(x.dtype)
            return x.scale(skip).zip(out.scale(p.c_out(s).to(x.dtype)), torch.add).project()

        def convert(k, v):
            return to_x0(self.prediction, v, x[k], coefficients(self.process, t, x, k))

        return x.like({k: convert(k, out[k]) for k in x.fields}).project()
