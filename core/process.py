"""Noise processes on continuous time t in [0, 1]: x_t = alpha(t) x_0 + sigma(t) eps.

Every process gives alpha, sigma, their time derivatives, the log signal-to-noise ratio
lambda = log(alpha^2 / sigma^2) and its inverse t(lambda). t = 0 is data, t = 1 is (close to) the
prior. Discrete-step models are a discretisation of the same functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from .schema import Annotated, Table, one_of, specs_of_signature


def check_t(t: Tensor, what: str = "t") -> Tensor:
    """Raise a clear error when times leave [0, 1] or are not finite (one host sync)."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=torch.float64)
    if not t.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {t.dtype}")
    if t.numel() and (not bool(torch.isfinite(t).all()) or float(t.min()) < 0.0 or float(t.max()) > 1.0):
        raise ValueError(f"{what} must lie in [0, 1]; got values from {float(t.min()):.4g} to {float(t.max()):.4g}")
    return t


@dataclass(frozen=True)
class Coefficients:
    """alpha, sigma and their time derivatives at some times (one call: ``process.coefficients(t)``)."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor

    def map(self, fn) -> "Coefficients":
        return Coefficients(fn(self.alpha), fn(self.sigma), fn(self.d_alpha), fn(self.d_sigma))


class Process:
    """Base class. Subclasses implement alpha, sigma, d_alpha, d_sigma, log_snr, t_of_log_snr."""

    name = "process"

    def coefficients(self, t: Tensor) -> Coefficients:
        """alpha(t), sigma(t), alpha'(t), sigma'(t) in float64."""
        t = t.to(torch.float64)
        return Coefficients(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """d sigma / dt."""
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of log_snr (lambda decreases with t)."""
        raise NotImplementedError

    def sigma_tilde(self, t: Tensor) -> Tensor:
        """VE-equivalent noise level sigma/alpha = exp(-lambda/2) (EDM's sigma)."""
        return self.sigma(t) / self.alpha(t)

    def t_of_sigma_tilde(self, s: Tensor) -> Tensor:
        return self.t_of_log_snr(-2.0 * torch.log(s))

    def config(self) -> dict:
        """JSON-serialisable description (name and parameters), for checkpoints and manifests."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class VPCosine(Process):
    """Variance-preserving cosine schedule: alpha = cos(phi), sigma = sin(phi), phi linear in t.

    phi(t) = b + (a - b) t with b = atan(exp(-lambda_max/2)), a = atan(exp(-lambda_min/2)), so the
    log-SNR runs from lambda_max (default +inf: alpha(0) = 1, sigma(0) = 0) to lambda_min at t = 1
    (Nichol & Dhariwal 2021, truncated as in Kingma et al. 2021).
    """

    name = "vp_cosine"

    def __init__(self, log_snr_min: float = -15.0, log_snr_max: float = math.inf):
        if not log_snr_min < log_snr_max:
            raise ValueError("log_snr_min must be below log_snr_max")
        self.log_snr_min, self.log_snr_max = float(log_snr_min), float(log_snr_max)
        self.b = math.atan(math.exp(-self.log_snr_max / 2))
        self.a = math.atan(math.exp(-self.log_snr_min / 2))

    def phi(self, t):
        return self.b + (self.a - self.b) * t

    def alpha(self, t):
        return torch.cos(self.phi(t))

    def sigma(self, t):
        return torch.sin(self.phi(t))

    def d_alpha(self, t):
        return -torch.sin(self.phi(t)) * (self.a - self.b)

    def d_sigma(self, t):
        return torch.cos(self.phi(t)) * (self.a - self.b)

    def log_snr(self, t):
        return -2.0 * torch.log(torch.tan(self.phi(t)))

    def t_of_log_snr(self, lam):
        return (torch.atan(torch.exp(-lam / 2)) - self.b) / (self.a - self.b)

    def config(self):
        return {"name": self.name, "log_snr_min": self.log_snr_min, "log_snr_max": self.log_snr_max}


class VPLinear(Process):
    """Variance-preserving process with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021).

    log alpha(t) = -t^2 (beta_max - beta_min)/4 - t beta_min/2, sigma = sqrt(1 - alpha^2).
    """

    name = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t):
        return self.alpha(t) * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t):
        la2 = 2.0 * self.log_alpha(t)
        return la2 - torch.log(-torch.expm1(la2))

    def t_of_log_snr(self, lam):
        d = self.beta_max - self.beta_min
        log_a2 = torch.nn.functional.logsigmoid(lam)  # log alpha^2
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 2.0 * d * log_a2)) / d

    def config(self):
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}


def polynomial_alphas2(timesteps: int, power: float = 2.0, precision: float = 1e-5, clip: float = 1e-3) -> np.ndarray:
    """EDM's "polynomial_2" alpha^2 table on t = 0, 1/T, ..., 1 (Hoogeboom et al. 2022, App. B).

    alpha^2 = (1 - (x / (T+1))^power)^2 on T+1 evenly spaced x in [0, T+1]; one-step ratios
    clipped to >= clip and re-accumulated; then alpha^2 <- (1 - 2s) alpha^2 + s.
    """
    steps = timesteps + 1
    x = np.linspace(0, steps, steps, dtype=np.float64)
    alphas2 = (1 - np.power(x / steps, power)) ** 2
    alphas2 = np.concatenate([np.ones(1), alphas2])
    ratios = np.clip(alphas2[1:] / alphas2[:-1], a_min=clip, a_max=1.0)
    alphas2 = np.cumprod(ratios)
    return (1 - 2 * precision) * alphas2 + precision


class TabulatedVP(Process):
    """A variance-preserving process given by its log-SNR on the grid t = k/T, k = 0..T, made
    continuous by linear interpolation of the log-SNR (exact at the grid points). Discrete-step
    models (EDM's polynomial schedule, DDPM's beta schedules) are processes of this kind.

    The first entry may be +inf (exactly clean data at t = 0); then on [0, 1/T] the VE-equivalent
    variance sigma~^2 = exp(-lambda) is interpolated linearly instead: lambda = lambda_1 - log(t T)."""

    name = "tabulated_vp"

    def __init__(self, log_snr_table):
        lam = torch.as_tensor(log_snr_table, dtype=torch.float64).reshape(-1)
        if lam.numel() < 2 or not bool((lam[1:] < lam[:-1]).all()) or bool(torch.isnan(lam).any()):
            raise ValueError("a log-SNR table needs at least 2 strictly decreasing values")
        if bool(torch.isinf(lam[1:]).any()):
            raise ValueError("only the first log-SNR entry (t = 0) may be infinite")
        self.timesteps = lam.numel() - 1
        self.clean_start = bool(torch.isinf(lam[0]))
        self._lam = lam
        self._interp = lam.clone()
        if self.clean_start:
            self._interp[0] = lam[1] + 1.0  # finite stand-in; the first interval is handled apart

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod) -> "TabulatedVP":
        """DDPM-style discrete schedule: t = 0 is clean data, t = k/T has alpha^2 = alphas_cumprod[k-1]."""
        a2 = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
        lam = torch.log(a2) - torch.log1p(-a2)
        return cls(torch.cat([torch.tensor([math.inf], dtype=torch.float64), lam]))

    def _first(self, u: Tensor) -> Tensor:
        """Where t lies in the VE-linear first interval of a clean-start table (u = t T)."""
        return (u < 1.0) if self.clean_start else torch.zeros_like(u, dtype=torch.bool)

    def log_snr(self, t):
        lam = self._interp.to(t.device)
        u = t.to(torch.float64) * self.timesteps
        k = u.floor().clamp(0, self.timesteps - 1)
        frac = u - k
        k = k.long()
        out = lam[k] + frac * (lam[k + 1] - lam[k])
        if self.clean_start:
            out = torch.where(self._first(u), lam[1] - torch.log(u), out)
        return out.to(t.dtype)

    def d_log_snr(self, t):
        lam = self._interp.to(t.device)
        u = t.to(torch.float64) * self.timesteps
        k = u.floor().clamp(0, self.timesteps - 1).long()
        out = (lam[k + 1] - lam[k]) * self.timesteps
        if self.clean_start:
            out = torch.where(self._first(u), -1.0 / t.to(torch.float64), out)
        return out.to(t.dtype)

    def alpha(self, t):
        return torch.sqrt(torch.sigmoid(self.log_snr(t)))

    def sigma(self, t):
        return torch.sqrt(torch.sigmoid(-self.log_snr(t)))

    def d_alpha(self, t):
        lam = self.log_snr(t)
        out = 0.5 * torch.sqrt(torch.sigmoid(lam)) * torch.sigmoid(-lam) * self.d_log_snr(t)
        if self.clean_start:  # alpha^2 = 1/(1 + t T s1): d alpha/dt = -alpha^3 T s1 / 2
            s1 = math.exp(-float(self._lam[1]))
            out = torch.where(self._first(t * self.timesteps), -0.5 * self.alpha(t) ** 3 * self.timesteps * s1, out)
        return out

    def d_sigma(self, t):
        lam = self.log_snr(t)
        out = -0.5 * torch.sqrt(torch.sigmoid(-lam)) * torch.sigmoid(lam) * self.d_log_snr(t)
        if self.clean_start:  # sigma^2 = v/(1+v), v = t T s1: d sigma/dt = T s1 alpha^4 / (2 sigma)
            s1 = math.exp(-float(self._lam[1]))
            out = torch.where(self._first(t * self.timesteps),
                              0.5 * self.timesteps * s1 * self.alpha(t) ** 4 / self.sigma(t), out)
        return out

    def t_of_log_snr(self, lam):
        table = self._interp.to(lam.device)
        desc = -table  # increasing
        x = -lam.to(torch.float64)
        k = torch.searchsorted(desc, x.contiguous()).clamp(1, self.timesteps) - 1
        frac = (x - desc[k]) / (desc[k + 1] - desc[k])
        out = (k + frac.clamp(0, 1)) / self.timesteps
        if self.clean_start:
            first = lam.to(torch.float64) > table[1]
            out = torch.where(first, torch.exp(table[1] - lam.to(torch.float64)) / self.timesteps, out)
        return out.to(lam.dtype)

    def config(self):
        return {"name": self.name, "log_snr_table": [float(v) for v in self._lam]}


class PolynomialVP(TabulatedVP):
    """EDM's discrete variance-preserving polynomial schedule (``polynomial_alphas2``) as a
    tabulated process."""

    name = "polynomial"

    def __init__(self, timesteps: int = 1000, power: float = 2.0, precision: float = 1e-5):
        a2 = polynomial_alphas2(int(timesteps), float(power), float(precision))
        super().__init__(np.log(a2) - np.log1p(-a2))
        self.power, self.precision = float(power), float(precision)

    def config(self):
        return {"name": self.name, "timesteps": self.timesteps, "power": self.power, "precision": self.precision}


class KarrasVE(Process):
    """EDM (Karras et al. 2022) variance-exploding process with sigma(t) = sigma_max t, alpha = 1.

    t is the noise level in units of sigma_max; Karras' rho-spaced sigmas are a time grid
    (see ``grids.karras``) that works for every process.
    """

    name = "karras_ve"

    def __init__(self, sigma_max: float = 80.0):
        self.sigma_max = float(sigma_max)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_max * t

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return torch.full_like(t, self.sigma_max)

    def log_snr(self, t):
        return -2.0 * torch.log(self.sigma_max * t)

    def t_of_log_snr(self, lam):
        return torch.exp(-lam / 2) / self.sigma_max

    def config(self):
        return {"name": self.name, "sigma_max": self.sigma_max}


class RectifiedFlow(Process):
    """Rectified flow / linear interpolation path: alpha = 1 - t, sigma = t (Liu et al. 2022)."""

    name = "rectified_flow"

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def log_snr(self, t):
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def t_of_log_snr(self, lam):
        return torch.sigmoid(-lam / 2)


class LinearBetaVP(TabulatedVP):
    """DDPM's discrete linear-beta schedule (Ho et al. 2020): beta_n = linspace(beta_start, beta_end, T),
    alpha-bar_n = prod_{k<=n} (1 - beta_k) at t = n/T, t = 0 clean data (a tabulated process)."""

    name = "ddpm_linear"

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if int(timesteps) < 2 or not 0 < beta_start < beta_end < 1:
            raise ValueError(f"ddpm_linear needs timesteps >= 2 and 0 < beta_start < beta_end < 1 "
                             f"(got {timesteps}, {beta_start}, {beta_end})")
        a2 = linear_beta_alphas_cumprod(int(timesteps), float(beta_start), float(beta_end))
        lam = np.concatenate([[math.inf], np.log(a2) - np.log1p(-a2)])
        super().__init__(lam)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)

    def config(self):
        return {"name": self.name, "timesteps": self.timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end}


def linear_beta_alphas_cumprod(timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """alpha-bar_n = prod_{k<=n} (1 - beta_k), beta = linspace(beta_start, beta_end, T), float64."""
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, timesteps, dtype=np.float64))


PROCESSES = {c.name: c for c in (VPCosine, VPLinear, TabulatedVP, PolynomialVP, LinearBetaVP, KarrasVE, RectifiedFlow)}


def process_names() -> list[str]:
    return sorted(PROCESSES)


@dataclass(frozen=True)
class ProcessConfig(Table):
    """The ``[process]`` table: ``name`` picks the process; its other keys are that process's
    constructor parameters (the signature is the schema)."""

    selector: ClassVar[str] = "name"
    name: Annotated[str, one_of(process_names)] = "vp_cosine"  # the noise path, a name in PROCESSES

    @classmethod
    def choice_fields(cls, value):
        proc = PROCESSES.get(value)
        return None if proc is None else specs_of_signature(proc.__init__, skip=("self",))


def process_from_config(cfg: dict | str) -> Process:
    """Build a process from ``{"name": ..., **params}`` (or just its name)."""
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in PROCESSES:
        raise ValueError(f"unknown process '{name}'; known: {sorted(PROCESSES)}")
    return PROCESSES[name](**cfg)
