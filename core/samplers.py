"""Samplers: small free functions with one signature

    sampler(denoiser, x, grid, cond=None, *, noise=None, constraint=None, callback=None,
            final_denoise=True, **options) -> State

``denoiser`` follows the x0-hat contract (see ``parameterisation.Denoiser``) and carries its
process; ``x`` is the state at ``grid[0]`` (see :func:`prior`); ``grid`` is a decreasing tensor of
times ending at the data end. Per-step coefficients are computed once on the host in float64, so
the loop itself has no host syncs. Randomness comes only from ``noise`` (one stream per example
seed). ``constraint`` (inpainting, ...) is applied to the state after every step; ``callback``
receives (step, steps, t_next, x, x0_hat). A sampler's own keyword options (``eta``, ``resample``,
``rtol``...) are the keys a ``[sample]`` table may add once the sampler is chosen; a sampler that
cannot run without a constraint says so with ``needs_constraint = True``.

Notation: a = alpha(t), s = sigma(t), subscript n for the next (less noisy) time,
eps_hat = (x - a D) / s, lambda = log(a^2/s^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .grids import check_grid
from .noise import ExampleNoise, need_noise
from .process import Process
from .state import State

Callback = Callable[[int, int, float, State, State], None]
#: the arguments every sampler shares (everything else in a signature is an option)
SAMPLER_ARGS = frozenset({"denoiser", "x", "grid", "cond", "noise", "constraint", "callback", "final_denoise", "info"})


@dataclass(frozen=True)
class Schedule:
    """alpha, sigma, their derivatives and lambda at each grid point, as Python floats."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    d_alpha: list[float]
    d_sigma: list[float]

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def lam(self, i: int) -> float:
        """log-SNR at grid point i (+inf where sigma = 0, -inf where alpha = 0)."""
        a, s = self.alpha[i], self.sigma[i]
        if s == 0:
            return math.inf
        if a == 0:
            return -math.inf
        return 2.0 * (math.log(a) - math.log(s))


def schedule(process: Process, grid: Tensor) -> Schedule:
    g = check_grid(grid)
    with torch.no_grad():
        parts = [process.alpha(g), process.sigma(g), process.d_alpha(g), process.d_sigma(g)]
    return Schedule(g.tolist(), *[[float(v) for v in p] for p in parts])


def prior(process: Process, like: State, noise: ExampleNoise, t: float | Tensor) -> State:
    """Initial state at time t (a float, or a time grid whose first time is used): sigma(t) times
    standard noise in each field's space; a categorical field starts all masked."""
    if torch.is_tensor(t):
        t = float(t.reshape(-1)[0])
    s = float(process.sigma(torch.tensor([t], dtype=torch.float64)))
    z = noise.normal(like)
    return like.like({k: like.space(k).mask_token(v) if like.space(k).categorical else z[k] * s
                      for k, v in like.fields.items()})


# ----------------------------------------------------------------------------- shared plumbing


def _times(x: State, t: float) -> Tensor:
    return torch.full((x.batch_size,), t, dtype=torch.float32 if x.dtype == torch.float16 else x.dtype, device=x.device)


def _eval(denoiser, x: State, t: float, cond) -> State:
    return denoiser(x, _times(x, t), cond)


def _start(denoiser, x: State, grid, constraint, noise):
    sched = schedule(denoiser.process, grid)
    x.validate()
    if constraint is not None:
        x = constraint(x, sched.t[0], noise)
    return sched, x


def _jump(x: State, x_prev: State, i: int, sched: Schedule, D: State, noise) -> State:
    """Categorical fields take their jump from x_prev (the arithmetic of the continuous update
    means nothing for them): ``spaces.Categorical.jump`` from t_i to t_{i+1}."""
    names = x_prev.categorical()
    if not names:
        return x
    z = need_noise(noise, "a categorical field").normal(_only(x_prev, names))
    out = dict(x.fields)
    for k in names:
        out[k] = x_prev.space(k).jump(x_prev[k], D[k], sched.t[i], sched.t[i + 1], z[k])
    return x.like(out)


def _only(x: State, names) -> State:
    return State({k: x[k] for k in names}, x.batch_size, {k: v for k, v in x.index.items() if k in names},
                 {k: v for k, v in x.masks.items() if k in names}, {k: v for k, v in x.spaces.items() if k in names})


def _keep_categorical(x: State, x_prev: State) -> State:
    """``x`` with the categorical fields of ``x_prev`` (an intermediate evaluation point)."""
    names = x_prev.categorical()
    return x if not names else x.like({**x.fields, **{k: x_prev[k] for k in names}})


def _no_categorical(x: State, what: str) -> None:
    if x.categorical():
        raise ValueError(f"{what} integrates an ODE or resamples continuously; it cannot sample the categorical "
                         f"field(s) {x.categorical()} (use ddpm, ddim, euler, heun, dpmpp_2m or euler_maruyama)")


def _after_step(x: State, i: int, sched: Schedule, D: State, constraint, noise, callback,
                x_prev: State | None = None) -> State:
    if x_prev is not None:
        x = _jump(x, x_prev, i, sched, D, noise)
    if constraint is not None:
        x = constraint(x, sched.t[i + 1], noise)
    if callback is not None:
        callback(i + 1, sched.steps, sched.t[i + 1], x, D)
    return x


def _finish(denoiser, x: State, sched: Schedule, cond, final_denoise: bool, constraint) -> State:
    """Tweedie denoise at the last time if it still carries noise, then pin constraints exactly."""
    if final_denoise and sched.sigma[-1] > 0:
        x = _eval(denoiser, x, sched.t[-1], cond)
    if constraint is not None:
        x = constraint.finish(x)
    return x


# ----------------------------------------------------------------------------- deterministic


def ddim_coefficients(sched: Schedule, i: int, eta: float) -> tuple[float, float, float]:
    """DDIM (Song et al. 2021, eq. 12): x_n = A x + B D + C z.

    c = eta s_n sqrt(1 - exp(lambda - lambda_n)), k = sqrt(s_n^2 - c^2), x_n = a_n D + k eps_hat + c z.
    """
    a, s, a_n, s_n = sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
    lam, lam_n = sched.lam(i), sched.lam(i + 1)
    ratio = 0.0 if lam == -math.inf or lam_n == math.inf else math.exp(lam - lam_n)
    c = eta * s_n * math.sqrt(max(0.0, 1.0 - ratio))
    k = math.sqrt(max(0.0, s_n**2 - c**2))
    return k / s, a_n - k * a / s, c


def sample_euler(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                 callback: Callback | None = None, final_denoise: bool = True) -> State:
    """Euler on the probability-flow ODE in EDM's variables (x~ = x/alpha against sigma~ = sigma/alpha):
    x~_n = x~ + (sigma~_n - sigma~) eps_hat, i.e. x_n = a_n D + s_n eps_hat."""
    sched, x = _start(denoiser, x, grid, constraint, noise)
    for i in range(sched.steps):
        D = _eval(denoiser, x, sched.t[i], cond)
        A, B, _ = ddim_coefficients(sched, i, 0.0)
        x_prev, x = x, (x * A + D * B).project()
        x = _after_step(x, i, sched, D, constraint, noise, callback, x_prev)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


def sample_heun(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                callback: Callback | None = None, final_denoise: bool = True) -> State:
    """Heun's second-order method on the PF-ODE in EDM's variables (Karras et al. 2022, Alg. 1):
    x~_n = x~ + (sigma~_n - sigma~)(eps_hat + eps_hat')/2. The last step (into the data end) and a
    step from alpha = 0 (an infinite sigma~) are Euler steps: n steps cost 2n - 1 evaluations."""
    sched, x = _start(denoiser, x, grid, constraint, noise)
    for i in range(sched.steps):
        a, s, a_n, s_n = sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
        D = _eval(denoiser, x, sched.t[i], cond)
        eps = (x - D * a) / s
        x_euler = _keep_categorical((D * a_n + eps * s_n).project(), x)
        x_prev = x
        if s_n == 0 or a == 0 or i == sched.steps - 1:
            x = x_euler
        else:
            D2 = _eval(denoiser, x_euler, sched.t[i + 1], cond)
            eps2 = (x_euler - D2 * a_n) / s_n
            # x_n = (a_n/a) x + (s_n - a_n s/a) (eps + eps2)/2
            x = (x * (a_n / a) + (eps + eps2) * (0.5 * (s_n - a_n * s / a))).project()
        x = _after_step(x, i, sched, D, constraint, noise, callback, x_prev)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


def sample_dpmpp_2m(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                    callback: Callback | None = None, final_denoise: bool = True) -> State:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, multistep, in half log-SNR
    l = log(a/s) = lambda/2: h = l_n - l, x_n = (s_n/s) x - a_n (e^{-h} - 1) D_eff,
    D_eff = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_prev / h. The first step and the last step are
    first order (D_eff = D): the last step into the data end has h far larger than h_prev, where the
    second-order extrapolation is unstable (diffusers' "lower_order_final")."""
    sched, x = _start(denoiser, x, grid, constraint, noise)
    D_prev, h_prev = None, None
    for i in range(sched.steps):
        s, a_n, s_n = sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
        h = 0.5 * (sched.lam(i + 1) - sched.lam(i))
        D = _eval(denoiser, x, sched.t[i], cond)
        expm = -1.0 if math.isinf(h) else math.expm1(-h)  # e^{-h} - 1
        if D_prev is None or math.isinf(h) or math.isinf(h_prev) or i == sched.steps - 1:
            D_eff = D
        else:
            r = h_prev / h
            D_eff = D * (1 + 1 / (2 * r)) - D_prev * (1 / (2 * r))
        x_prev, x = x, (x * (s_n / s) + D_eff * (-a_n * expm)).project()
        D_prev, h_prev = D, h
        x = _after_step(x, i, sched, D, constraint, noise, callback, x_prev)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


# ----------------------------------------------------------------------------- stochastic


def sample_ddim(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                callback: Callback | None = None, final_denoise: bool = True, eta: float = 0.0) -> State:
    """DDIM(eta): eta = 0 is deterministic (equal to Euler above), eta = 1 is DDPM's ancestral sampler."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0:
        need_noise(noise, "DDIM with eta > 0")
    sched, x = _start(denoiser, x, grid, constraint, noise)
    for i in range(sched.steps):
        D = _eval(denoiser, x, sched.t[i], cond)
        A, B, C = ddim_coefficients(sched, i, eta)
        x_prev, x = x, x * A + D * B
        if eta > 0:
            z = noise.normal(x)
            if C > 0:
                x = x + z * C
        x = _after_step(x.project(), i, sched, D, constraint, noise, callback, x_prev)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


def ddpm_posterior(sched: Schedule, i: int) -> tuple[float, float, float]:
    """q(x_n | x, x0) (Ho et al. 2020, eq. 7) in continuous time: with e = exp(lambda - lambda_n),
    mean = (a s_n^2 / (a_n s^2)) x + a_n (1 - e) x0, std = s_n sqrt(1 - e)."""
    a, s, a_n, s_n = sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
    lam, lam_n = sched.lam(i), sched.lam(i + 1)
    e = 0.0 if lam == -math.inf or lam_n == math.inf else math.exp(lam - lam_n)
    return (a / a_n) * (s_n / s) ** 2, a_n * (1.0 - e), s_n * math.sqrt(max(0.0, 1.0 - e))


def ddpm_step(x: State, D: State, sched: Schedule, i: int, z: State) -> State:
    """One ancestral step: a draw from q(x_n | x_t, x0 = D) with standard noise ``z``."""
    cx, cd, std = ddpm_posterior(sched, i)
    x = x * cx + D * cd
    return (x + z * std if std > 0 else x).project()


def sample_ddpm(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                callback: Callback | None = None, final_denoise: bool = True) -> State:
    """DDPM ancestral sampling: draw from the Gaussian posterior q(x_n | x_t, x0 = D) at each step."""
    noise = need_noise(noise, "DDPM ancestral sampling")
    sched, x = _start(denoiser, x, grid, constraint, noise)
    for i in range(sched.steps):
        D = _eval(denoiser, x, sched.t[i], cond)
        x_prev, x = x, ddpm_step(x, D, sched, i, noise.normal(x))
        x = _after_step(x, i, sched, D, constraint, noise, callback, x_prev)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


def sample_repaint(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                   callback: Callback | None = None, final_denoise: bool = True, resample: int = 10) -> State:
    """RePaint (Lugmayr et al. 2022, Alg. 1, jump length 1): each ancestral step but the last is
    taken ``resample`` times; between repeats the merged state is diffused back one step,
    x_t = (a_t/a_n) x_n + sqrt(s_t^2 - (a_t/a_n)^2 s_n^2) z, so the free part harmonises with the
    known part. The last step is taken once (Alg. 1 resamples only while t > 1): n steps cost
    (n - 1) resample + 1 evaluations."""
    noise = need_noise(noise, "RePaint")
    if constraint is None:
        raise ValueError("RePaint needs constraint=Inpaint(...)")
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be an integer >= 1, got {resample!r}")
    _no_categorical(x, "RePaint")
    sched, x = _start(denoiser, x, grid, constraint, noise)
    for i in range(sched.steps):
        a, s, a_n, s_n = sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]
        repeats = resample if i < sched.steps - 1 else 1
        for u in range(repeats):
            D = _eval(denoiser, x, sched.t[i], cond)
            x_n = constraint(ddpm_step(x, D, sched, i, noise.normal(x)), sched.t[i + 1], noise)
            if u < repeats - 1 and a_n > 0:
                back = a / a_n
                jump = max(0.0, s**2 - back**2 * s_n**2) ** 0.5
                x = (x_n * back + noise.normal(x_n) * jump).project()
        x = _after_step(x_n, i, sched, D, None, noise, callback)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


sample_repaint.needs_constraint = True  # type: ignore[attr-defined]


def sample_euler_maruyama(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                          callback: Callback | None = None, final_denoise: bool = True) -> State:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6) in the process's own time:
    dx = [f x - g^2 score] dt + g dw, f = alpha'/alpha, g^2 = -sigma^2 lambda', score = -eps_hat/s.
    A step that ends at sigma = 0 returns the denoised mean D (no noise is added at t = 0)."""
    noise = need_noise(noise, "Euler-Maruyama")
    sched, x = _start(denoiser, x, grid, constraint, noise)
    if sched.alpha[0] <= 0:
        raise ValueError("Euler-Maruyama needs alpha > 0 at the first time; start the grid below t = 1 for this process")
    for i in range(sched.steps):
        a, s, da, ds = sched.alpha[i], sched.sigma[i], sched.d_alpha[i], sched.d_sigma[i]
        dt = sched.t[i] - sched.t[i + 1]
        D = _eval(denoiser, x, sched.t[i], cond)
        z = noise.normal(x)
        x_prev = x
        if sched.sigma[i + 1] == 0:
            x = D
        else:
            f = da / a
            dlam = 2.0 * (da / a - ds / s)
            g2 = -(s**2) * dlam
            eps = (x - D * a) / s
            x = x - (x * f - eps * (s * dlam)) * dt + z * math.sqrt(g2 * dt)
        x = _after_step(x.project(), i, sched, D, constraint, noise, callback, x_prev)
    return _finish(denoiser, x, sched, cond, final_denoise, constraint)


# ----------------------------------------------------------------------------- adaptive ODE


def pf_ode_velocity(denoiser, x: State, t: Tensor, cond: Any = None) -> tuple[State, State]:
    """Probability-flow ODE drift dx/dt = alpha' D + sigma' eps_hat, with per-example t; returns (u, D)."""
    p: Process = denoiser.process
    t64 = t.to(torch.float64)
    a, s, da, ds = (p.alpha(t64), p.sigma(t64), p.d_alpha(t64), p.d_sigma(t64))
    D = denoiser(x, t.to(x.dtype), cond)
    eps = (x - D.scale(a)).scale(1.0 / s)
    return (D.scale(da) + eps.scale(ds)).project(), D


def sample_dopri5(denoiser, x: State, grid: Tensor, cond: Any = None, *, noise=None, constraint=None,
                  callback: Callback | None = None, final_denoise: bool = True, info: dict | None = None,
                  rtol: float = 1e-5, atol: float = 1e-5, sigma_min: float = 2e-3, max_steps: int = 10_000) -> State:
    """Adaptive Dormand-Prince 5(4) on the probability-flow ODE in t, from grid[0] to grid[-1].

    Step sizes are controlled per example, so a sample does not depend on its batch. The
    integration stops at the noise level sigma~ = sigma_min (the ODE is singular at sigma = 0) and
    finishes with one denoising step there. ``info``, when given a dict, receives the solver's
    statistics (nfe, accepted, rejected)."""
    _no_categorical(x, "dopri5")
    sched, x = _start(denoiser, x, grid, None, noise)
    p = denoiser.process
    t_end = sched.t[-1]
    if sched.sigma[-1] == 0 or float(p.sigma_tilde(torch.tensor(t_end, dtype=torch.float64))) < sigma_min:
        t_stop = float(p.t_of_sigma_tilde(torch.tensor(sigma_min, dtype=torch.float64)))
        t_stop = min(max(t_stop, t_end), sched.t[0])
    else:
        t_stop = t_end
    B = x.batch_size
    t0 = torch.full((B,), sched.t[0], dtype=torch.float64, device=x.device)
    t1 = torch.full((B,), t_stop, dtype=torch.float64, device=x.device)
    x, stats = dopri5(lambda y, t: pf_ode_velocity(denoiser, y, t, cond)[0], x, t0, t1, rtol, atol, max_steps)
    if callback is not None:
        callback(1, 1, t_stop, x, x)
    if final_denoise and t_stop > 0 and float(p.sigma(torch.tensor(t_stop, dtype=torch.float64))) > 0:
        x = _eval(denoiser, x, t_stop, cond)
    if info is not None:
        info.update(stats)
    return x


# Dormand & Prince (1980) RK5(4)7M tableau.
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_DP_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_DP_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def dopri5(f: Callable[[State, Tensor], State], y: State, t0: Tensor, t1: Tensor, rtol: float = 1e-5,
           atol: float = 1e-5, max_steps: int = 10_000) -> tuple[State, dict]:
    """Integrate dy/dt = f(y, t) from t0 to t1 (per-example (B,) float64 times, either direction)
    with Dormand-Prince 5(4) and per-example step-size control (RMS error norm, safety 0.9)."""
    span = t1 - t0
    direction = torch.sign(span)
    h = span * 0.02
    t = t0.clone()
    n_entries = _entries_per_example(y)
    k1 = f(y, t)
    nfe, accepted, rejected = 1, 0, 0
    for _ in range(max_steps):
        remaining = (t1 - t) * direction
        active = remaining > 1e-12
        if not bool(active.any()):
            break
        h = torch.where(active, direction * torch.minimum(h.abs(), remaining), torch.zeros_like(h))
        ks = [k1]
        for j in range(1, 7):
            inc = None
            for a_jl, k in zip(_DP_A[j], ks):
                if a_jl != 0.0:
                    inc = k * a_jl if inc is None else inc + k * a_jl
            ks.append(f(y + inc.scale(h), t + _DP_C[j] * h))
        nfe += 6
        # Stage 7 is evaluated at the 5th-order solution (FSAL): it is the next step's first stage.
        y_new, err = None, None
        for b5, b4, k in zip(_DP_B5, _DP_B4, ks):
            if b5 != 0.0:
                y_new = k * b5 if y_new is None else y_new + k * b5
            if b5 - b4 != 0.0:
                err = k * (b5 - b4) if err is None else err + k * (b5 - b4)
        y_new = y + y_new.scale(h)
        err = err.scale(h)
        tol = y.map(lambda name, v: atol + rtol * torch.maximum(v.abs(), y_new[name].abs()))
        err_norm = torch.sqrt(y.sum_per_example((err / tol).map(lambda name, v: v.pow(2))).to(torch.float64) / n_entries)
        ok = (err_norm <= 1.0) & active
        accepted += int(ok.sum())
        rejected += int((~ok & active).sum())
        y = _select(y, y_new, ok)
        t = torch.where(ok, t + h, t)
        k1 = _select(k1, ks[6], ok)
        factor = torch.clamp(0.9 * err_norm.clamp_min(1e-10) ** -0.2, 0.2, 10.0)
        h = h * torch.where(active, factor, torch.ones_like(factor))
    else:
        raise RuntimeError(f"dopri5 did not reach the end time in {max_steps} steps")
    return y, {"nfe": nfe, "accepted": accepted, "rejected": rejected}


def _entries_per_example(y: State) -> Tensor:
    total = None
    for k, v in y.fields.items():
        c = y.layout(k).counts(v)
        total = c if total is None else total + c
    return total.clamp_min(1)


def _select(old: State, new: State, ok: Tensor) -> State:
    """Per example: ``new`` where ok else ``old``."""
    return old.like({k: torch.where(old.expand(ok, k), new[k], v) for k, v in old.fields.items()})


SAMPLERS: dict[str, Callable[..., State]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_maruyama": sample_euler_maruyama,
    "dopri5": sample_dopri5,
    "repaint": sample_repaint,
}


def get_sampler(name: str) -> Callable[..., State]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}'; known: {sorted(SAMPLERS)}") from None
