"""Exact targets: data distributions whose ideal denoiser E[x0 | x_t] and noisy marginal log-density
are known in closed form, so samplers, guidance and likelihoods can be checked against ground truth
without a trained network (see shared reference core.md).

With x_t = alpha x0 + sigma eps and an isotropic Gaussian component N(mu_k, s_k^2 I) on a
subspace of dimension n: x_t | k ~ N(alpha mu_k, v_k I), v_k = alpha^2 s_k^2 + sigma^2, and
E[x0 | x_t, k] = mu_k + (alpha s_k^2 / v_k)(x_t - alpha mu_k).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .process import Process
from .spaces import Euclidean, Space, ZeroMean
from .state import State


class GaussianMixture:
    """Mixture of isotropic Gaussians over a dense field of event shape ``means.shape[1:]``.

    With ``space=ZeroMean()`` the event is a point set (N, d): means must have zero centre of mass
    and each component is isotropic inside the (N-1)d-dimensional zero-mean subspace.
    ``labels`` (K,) assign components to classes for conditional targets.
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None,
                 labels: Tensor | None = None, space: Space | None = None, field: str = "x"):
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        self.space = space or Euclidean()
        self.field = field
        self.event_shape = tuple(means.shape[1:])
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.log_weights = torch.log(w / w.sum())
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if isinstance(self.space, ZeroMean):
            if len(self.event_shape) != 2:
                raise ValueError("a ZeroMean mixture needs means of shape (K, N, d)")
            means = means - means.mean(dim=1, keepdim=True)
            n, d = self.event_shape
            self.dim = (n - 1) * d
        else:
            self.dim = int(math.prod(self.event_shape))
        self.means = means

    # ------------------------------------------------------------------ helpers
    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.2, labels: bool = False) -> "GaussianMixture":
        """k Gaussians evenly spaced on a circle (the reference page's 8-Gaussian ring)."""
        ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
        return cls(means, std, labels=torch.arange(k) if labels else None)

    def state(self, x: Tensor) -> State:
        """Wrap a (B, *event) tensor as a state with this target's field and space."""
        return State({self.field: x}, x.shape[0], spaces={self.field: self.space})

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def _log_weights(self, cond: Any, batch: int, device) -> Tensor:
        """(B, K) log weights; cond = class labels (B,) (or {"label": labels}) restrict to that
        class, -1 or None = all."""
        lw = self.log_weights.to(device).expand(batch, -1)
        if isinstance(cond, dict):
            cond = cond["label"]
        if cond is None:
            return lw
        if self.labels is None:
            raise ValueError("this mixture has no class labels, so it cannot be conditioned")
        c = torch.as_tensor(cond, device=device).reshape(-1, 1)
        keep = (self.labels.to(device).reshape(1, -1) == c) | (c < 0)
        lw = torch.where(keep, lw, torch.full_like(lw, -math.inf))
        return lw - torch.logsumexp(lw, dim=1, keepdim=True)

    def _component_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per component: variance v_k (B, K), residual x - alpha mu_k (B, K, E), log N (B, K)."""
        xf = self._flat(x)
        a = alpha.to(torch.float64).reshape(-1, 1)
        s = sigma.to(torch.float64).reshape(-1, 1)
        mu = self._flat(self.means.to(x.device))
        v = a**2 * self.stds.to(x.device).reshape(1, -1) ** 2 + s**2
        resid = xf[:, None, :] - a[:, :, None] * mu[None]
        logn = -0.5 * self.dim * torch.log(2 * math.pi * v) - 0.5 * resid.pow(2).sum(-1) / v
        return v, resid, logn, a, mu

    # ------------------------------------------------------------------ exact quantities
    def denoise(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """E[x0 | x_t = x] for per-example alpha, sigma (B,)."""
        v, resid, logn, a, mu = self._component_terms(x, alpha, sigma)
        r = torch.softmax(logn + self._log_weights(cond, x.shape[0], x.device), dim=1)  # (B, K)
        gain = a * self.stds.to(x.device).reshape(1, -1) ** 2 / v  # (B, K)
        post = mu[None] + gain[:, :, None] * resid  # (B, K, E)
        out = (r[:, :, None] * post).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def log_prob_t(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """log p_t(x) of the noisy marginal (density on the target's space), (B,) float64."""
        _, _, logn, _, _ = self._component_terms(x, alpha, sigma)
        return torch.logsumexp(logn + self._log_weights(cond, x.shape[0], x.device), dim=1)

    def log_prob(self, x: Tensor, cond: Any = None) -> Tensor:
        """log p_0(x) of the clean data."""
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self.log_prob_t(x, ones, torch.zeros_like(ones), cond)

    def class_log_prob_t(self, x: Tensor, alpha: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
        """log p(y | x_t) = log p_t(x | y) + log p(y) - log p_t(x): an exact noisy classifier."""
        _, _, logn, _, _ = self._component_terms(x, alpha, sigma)
        lw = self.log_weights.to(x.device).expand(x.shape[0], -1)
        keep = self.labels.to(x.device).reshape(1, -1) == y.reshape(-1, 1)
        joint = torch.logsumexp(torch.where(keep, logn + lw, torch.full_like(logn, -math.inf)), dim=1)
        return joint - torch.logsumexp(logn + lw, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None, cond: Any = None) -> Tensor:
        """n draws from the data distribution (float64), optionally from one class per draw."""
        lw = self._log_weights(cond, n, "cpu") if cond is not None else self.log_weights.expand(n, -1)
        comp = torch.multinomial(lw.exp(), 1, generator=generator).squeeze(1)
        z = torch.randn((n,) + self.event_shape, dtype=torch.float64, generator=generator)
        x = self.means[comp] + self.stds[comp].reshape(-1, *([1] * len(self.event_shape))) * z
        if isinstance(self.space, ZeroMean):
            x = x - x.mean(dim=1, keepdim=True)
        return x

    def component_of(self, x: Tensor) -> Tensor:
        """Most likely component of each clean sample."""
        _, _, logn, _, _ = self._component_terms(x, torch.ones(x.shape[0]), torch.zeros(x.shape[0]))
        return (logn + self.log_weights).argmax(1)


class ExactDenoiser(torch.nn.Module):
    """The ideal x0-hat of a GaussianMixture under a process: the samplers' "network"."""

    def __init__(self, target: GaussianMixture, process: Process):
        super().__init__()
        self.target = target
        self.process = process
        self.calls = 0

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        self.calls += 1
        t64 = t.to(torch.float64)
        f = self.target.field
        d = self.target.denoise(x[f], self.process.alpha(t64), self.process.sigma(t64), cond)
        return x.like({f: d}).project()


class ZeroMeanGaussian:
    """x0 ~ N(0, std^2 P) per example on any ZeroMean field (indexed graphs or dense sets, masks
    allowed): the exact target for variable-size batches. E[x0|x_t] = alpha std^2 / v x_t."""

    def __init__(self, std: float = 1.0, field: str = "pos"):
        self.std, self.field = float(std), field

    def denoise(self, x: State, alpha: Tensor, sigma: Tensor) -> State:
        v = alpha**2 * self.std**2 + sigma**2
        return x.scale(alpha * self.std**2 / v).project()

    def log_prob_t(self, x: State, alpha: Tensor, sigma: Tensor) -> Tensor:
        v = alpha.to(torch.float64) ** 2 * self.std**2 + sigma.to(torch.float64) ** 2
        dof = x.dof()
        return -0.5 * dof * torch.log(2 * math.pi * v) - 0.5 * x.squared_norm().to(torch.float64) / v


class ExactZeroMeanDenoiser(torch.nn.Module):
    def __init__(self, target: ZeroMeanGaussian, process: Process):
        super().__init__()
        self.target, self.process = target, process

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        t64 = t.to(torch.float64)
        return self.target.denoise(x, self.process.alpha(t64), self.process.sigma(t64))


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (n, ...) (flattened),
    averaged over random unit directions (Bonneel et al. 2015)."""
    a = a.reshape(a.shape[0], -1).to(torch.float64)
    b = b.reshape(b.shape[0], -1).to(torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equal-size sample sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a.cpu() @ dirs, dim=0)
    pb, _ = torch.sort(b.cpu() @ dirs, dim=0)
    return float((pa - pb).pow(2).mean().sqrt())
