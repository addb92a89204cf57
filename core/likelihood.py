"""Log-likelihood through the probability-flow ODE (Song et al. 2021, App. D; Chen et al. 2018).

With u(x, t) = alpha' D + sigma' eps_hat the PF-ODE drift, d/dt log p_t(x(t)) = -div u, so

    log p_{t_min}(x) = log p_prior(x(t_max)) + int_{t_min}^{t_max} div u(x(t), t) dt,

integrated with adaptive Dormand-Prince. Since eps_hat = (x - alpha D)/sigma,
div u = (alpha' - sigma' alpha / sigma) div D + (sigma'/sigma) n, where n is the number of degrees
of freedom of the state's spaces (e.g. (N-1) d for zero-centre-of-mass positions): divergences
are traces inside each space. div D is exact (one backward pass per coordinate of an example) or
Hutchinson's estimate z^T (dD/dx) z with z standard noise of the space.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .noise import ExampleNoise, example_coordinates
from .samplers import dopri5
from .state import State

_DLOGP = "__delta_logp"


def _positions(x: State) -> dict[str, Tensor]:
    """For each field, the flat position of each entry inside its example (0..entries-1)."""
    out = {}
    for k, v in x.fields.items():
        _, coords = example_coordinates(v, x.index.get(k), x.batch_size)
        pos = torch.zeros_like(v, dtype=torch.long)
        for c in coords:
            size = int(c.max()) + 1 if c.numel() else 1
            pos = pos * size + c
        out[k] = pos
    return out


def divergence_exact(fn, x: State) -> Tensor:
    """tr(d fn / dx) per example inside each field's space, one backward pass per coordinate
    position of an example. ``fn`` maps a state to a state of the same layout."""
    pos = _positions(x)
    offsets, total = {}, 0
    for k in x.names:
        offsets[k] = total
        total += int(pos[k].max()) + 1 if pos[k].numel() else 0
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.fields.items()}
        xin = x.like(leaves).project()
        out = fn(xin).project()
        div = torch.zeros(x.batch_size, dtype=torch.float64, device=x.device)
        for j in range(total):
            onehots = {k: (pos[k] + offsets[k] == j).to(out[k].dtype) for k in x.names}
            if not any(bool(o.any()) for o in onehots.values()):
                continue
            grads = torch.autograd.grad(
                [out[k] for k in x.names], [leaves[k] for k in x.names],
                grad_outputs=[onehots[k] for k in x.names], retain_graph=True, allow_unused=True,
            )
            for k, g in zip(x.names, grads):
                if g is not None:
                    div = div + x.layout(k).sum_per_example((g * onehots[k]).to(torch.float64))
    return div


def divergence_hutchinson(fn, x: State, z: State) -> Tensor:
    """Hutchinson's estimate z^T (d fn / dx) z per example (z: noise in the state's spaces)."""
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.fields.items()}
        out = fn(x.like(leaves).project()).project()
        grads = torch.autograd.grad([out[k] for k in x.names], [leaves[k] for k in x.names],
                                    grad_outputs=[z[k] for k in x.names], allow_unused=True)
    total = torch.zeros(x.batch_size, dtype=torch.float64, device=x.device)
    for k, g in zip(x.names, grads):
        if g is not None:
            total = total + x.layout(k).sum_per_example((g * z[k]).to(torch.float64))
    return total


def prior_log_prob(x: State, sigma: float) -> Tensor:
    """log N(x; 0, sigma^2 I) on the state's spaces (dof-dimensional), per example."""
    dof = x.dof()
    return -0.5 * dof * math.log(2 * math.pi * sigma**2) - 0.5 * x.squared_norm().to(torch.float64) / sigma**2


def bits_per_dim(log_prob: Tensor, dof: Tensor) -> Tensor:
    """-log2 p / degrees of freedom."""
    return -log_prob / (dof * math.log(2.0))


def log_likelihood(denoiser, x: State, cond: Any = None, *, t_min: float = 1e-3, t_max: float = 1.0,
                   divergence: str = "exact", noise: ExampleNoise | None = None, rtol: float = 1e-5,
                   atol: float = 1e-5) -> dict[str, Tensor]:
    """log p_{t_min}(x) per example (nats) under the model's probability-flow ODE.

    Returns ``log_prob``, ``prior_log_prob``, ``delta`` (the integral), ``dof``, ``bpd`` and
    ``nfe``. ``x`` is the data at time t_min (choose t_min small; at t_min the marginal is the data
    convolved with N(0, sigma(t_min)^2))."""
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    x = x.validate().project()
    if x.categorical():
        raise ValueError(f"the probability-flow likelihood is for continuous fields; {x.categorical()} are categorical")
    p = denoiser.process
    probe = None
    if divergence == "hutchinson":
        if noise is None:
            raise ValueError("Hutchinson divergence needs noise=ExampleNoise(seeds)")
        probe = noise.normal(x)
    dof = x.dof()

    def drift(y: State, t: Tensor) -> State:
        xs = State({k: v for k, v in y.fields.items() if k != _DLOGP}, y.batch_size,
                   {k: v for k, v in y.index.items() if k != _DLOGP}, {k: v for k, v in y.masks.items() if k != _DLOGP},
                   x.spaces)
        a, s, da, ds = p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t)

        def den(z: State) -> State:
            return denoiser(z, t.to(z.dtype), cond)

        with torch.enable_grad():
            if probe is None:
                div_d = divergence_exact(den, xs)
            else:
                div_d = divergence_hutchinson(den, xs, probe)
        D = den(xs).detach()
        eps = (xs - D.scale(a)).scale(1.0 / s)
        u = (D.scale(da) + eps.scale(ds)).project()
        div_u = (da - ds * a / s) * div_d + (ds / s) * dof
        fields = dict(u.fields)
        fields[_DLOGP] = div_u.to(x.dtype).reshape(-1, 1)
        return State(fields, y.batch_size, y.index, y.masks, y.spaces)

    y0 = State({**x.fields, _DLOGP: torch.zeros(x.batch_size, 1, dtype=x.dtype, device=x.device)},
               x.batch_size, x.index, x.masks, x.spaces)
    B = x.batch_size
    t0 = torch.full((B,), t_min, dtype=torch.float64, device=x.device)
    t1 = torch.full((B,), t_max, dtype=torch.float64, device=x.device)
    y1, stats = dopri5(drift, y0, t0, t1, rtol, atol)
    x1 = State({k: v for k, v in y1.fields.items() if k != _DLOGP}, B, x.index, x.masks, x.spaces)
    delta = y1[_DLOGP].reshape(-1).to(torch.float64)
    sigma_max = float(p.sigma(torch.tensor(t_max, dtype=torch.float64)))
    prior = prior_log_prob(x1, sigma_max)
    logp = prior + delta
    return {"log_prob": logp, "prior_log_prob": prior, "delta": delta, "dof": dof,
            "bpd": bits_per_dim(logp, dof), "nfe": stats["nfe"]}
