"""Training objectives: per-field regression of the network output F on its target, with masks,
time distributions, loss weightings and condition dropout for classifier-free guidance.

The objective reads its process and parameterisation from the denoiser it trains (one source of
both). Every weighting is defined on the x0 error and carried to F's error with c_out^2 (an x0
error e is an F error e / c_out, see ``core.parameterisation``):
  uniform   plain MSE of F (weight 1 on F's error; for eps-prediction the "simple" DDPM loss)
  snr       w = SNR = exp(lambda) on the x0 error     (= eps-MSE, Ho et al. 2020)
  min_snr   w = min(SNR, gamma)                       (Hang et al. 2023)
  edm       w = (s^2 + sigma_data^2) / (s sigma_data)^2, s = sigma/alpha   (Karras et al. 2022)
With EDM's preconditioning, "edm" weighting is a weight of exactly 1 on F's error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from .schema import Annotated, Check, ConfigError, Table, one_of, positive, unit_interval
from .parameterisation import PREDICTIONS, SIGMA_DATA, Denoiser, EDMPreconditioning, Parameterisation, make_parameterisation
from .process import Coefficients, Process, check_t
from .spaces import expand_mask
from .state import State

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm")
#: time distributions and the defaults of their parameters (``objective.time_params``)
TIME_SAMPLERS: dict[str, tuple[float, ...]] = {
    "uniform": (),  # U[t_min, 1]
    "discrete": (),  # k/T, k uniform in 1..T (EDM's integer steps)
    "lognormal": (-1.2, 1.2),  # ln sigma~ ~ N(P_mean, P_std^2) (Karras et al. 2022)
    "logit_normal": (0.0, 1.0),  # t = sigmoid(N(m, s^2)) (Esser et al. 2024, SD3)
    "beta": (1.0, 1.0),  # t ~ Beta(a, b)
}
#: the smallest noise level sigma~ = sigma/alpha that samplers reach (``grids.karras``'s end)
SIGMA_MIN = 0.002


def _weightings() -> tuple:
    return ("auto",) + WEIGHTINGS


def _time_samplers() -> tuple:
    return ("auto",) + tuple(TIME_SAMPLERS)


@dataclass(frozen=True)
class ObjectiveConfig(Table):
    """The ``[objective]`` table."""

    prediction: Annotated[str, one_of(PREDICTIONS)] = "v"  # what the network predicts: eps | x0 | v | velocity
    edm_preconditioning: bool = False  # EDM's c_skip/c_out/c_in/c_noise around an x0 prediction
    sigma_data: Annotated[float, positive()] = SIGMA_DATA  # EDM: the data's standard deviation
    weighting: Annotated[str, one_of(_weightings)] = "auto"  # auto: edm with EDM preconditioning, else uniform
    min_snr_gamma: Annotated[float, positive()] = 5.0  # min_snr weighting: min(SNR, gamma)
    time_sampler: Annotated[str, one_of(_time_samplers)] = "auto"  # auto: lognormal with EDM preconditioning, else uniform
    time_params: list[float] = field(default_factory=list)  # the time distribution's parameters; [] = its defaults
    t_min: Annotated[float, Check(lo=0, hi=1, hi_open=True)] = 1e-3  # uniform, logit_normal, beta: times below are clamped
    sigma_min: Annotated[float, positive()] = SIGMA_MIN  # lognormal: smallest sigma~ drawn (where the karras grid ends)
    timesteps: Annotated[int, Check(lo=1)] = 1000  # discrete: T
    condition_dropout: Annotated[float, unit_interval()] = 0.0  # p of replacing a condition by the null one (CFG)
    self_conditioning: Annotated[float, unit_interval()] = 0.0  # p that an example sees the model's own x0 estimate (> 0: a self-conditioned model)
    field_weights: dict = field(default_factory=dict)  # {field: weight} on each field's loss (default 1)

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        if table["edm_preconditioning"] and table["prediction"] != "x0":
            raise ConfigError("objective.prediction", "EDM preconditioning wraps an x0 prediction: set prediction = "
                                                      f"\"x0\" (got {table['prediction']!r})")
        kind = resolved_time_sampler(table)
        want = len(TIME_SAMPLERS[kind])
        if table["time_params"] and len(table["time_params"]) != want:
            raise ConfigError("objective.time_params", f"time_sampler {kind!r} takes {want} parameters "
                                                       f"{list(TIME_SAMPLERS[kind]) or ''}, got {table['time_params']!r}")
        if kind == "beta" and any(p <= 0 for p in table["time_params"]):
            raise ConfigError("objective.time_params", f"Beta(a, b) needs a, b > 0, got {table['time_params']!r}")
        for k, w in table["field_weights"].items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"objective.field_weights.{k}", f"must be a number >= 0, got {w!r}")


def complete(obj: Mapping) -> dict:
    """An ``[objective]`` table with the keys it leaves out at their defaults (ObjectiveConfig)."""
    return {**ObjectiveConfig.defaults(), **obj}


def resolved_weighting(obj: Mapping) -> str:
    obj = complete(obj)
    return ("edm" if obj["edm_preconditioning"] else "uniform") if obj["weighting"] == "auto" else obj["weighting"]


def resolved_time_sampler(obj: Mapping) -> str:
    obj = complete(obj)
    kind = obj["time_sampler"]
    return ("lognormal" if obj["edm_preconditioning"] else "uniform") if kind == "auto" else kind


def parameterisation_of(obj: Mapping) -> Parameterisation:
    """The parameterisation an ``[objective]`` table asks for."""
    obj = complete(obj)
    return make_parameterisation(obj["prediction"], bool(obj["edm_preconditioning"]), float(obj["sigma_data"]))


# ----------------------------------------------------------------------------- times


def sample_time(kind: str, batch: int, process: Process, *, generator: torch.Generator | None = None,
                device=None, params: tuple | list = (), t_min: float = 1e-3, sigma_min: float = SIGMA_MIN,
                timesteps: int = 1000) -> Tensor:
    """Training times (B,) float64 in [0, 1] from the distribution ``kind`` (see TIME_SAMPLERS).

    lognormal draws sigma~ and clamps it to [sigma_min, sigma~(1)], the range samplers cover (its
    times are the process's own); uniform, logit_normal and beta clamp at t_min."""
    if kind not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler '{kind}'; known: {tuple(TIME_SAMPLERS)}")
    p = tuple(params) or TIME_SAMPLERS[kind]
    if kind == "uniform":
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        t = t_min + (1.0 - t_min) * u
    elif kind == "discrete":
        t = torch.randint(1, timesteps + 1, (batch,), generator=generator).to(torch.float64) / timesteps
    elif kind == "lognormal":
        z = torch.randn(batch, generator=generator, dtype=torch.float64)
        top = float(process.sigma_tilde(torch.ones((), dtype=torch.float64)))
        s = torch.exp(p[0] + p[1] * z).clamp(min=sigma_min, max=top)
        t = process.t_of_sigma_tilde(s).clamp(0.0, 1.0)
    elif kind == "logit_normal":
        z = torch.randn(batch, generator=generator, dtype=torch.float64)
        t = torch.sigmoid(p[0] + p[1] * z).clamp(t_min, 1.0)
    else:  # beta: X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b) (torch's samplers take no generator)
        x, y = _gamma(p[0], batch, generator), _gamma(p[1], batch, generator)
        t = (x / (x + y)).clamp(t_min, 1.0)
    return t.to(device) if device is not None else t


def _gamma(k: float, n: int, generator) -> Tensor:
    """Gamma(k, 1) by Marsaglia & Tsang (2000), boosted by U^(1/k) for k < 1; float64."""
    boost = k < 1
    k = k + 1.0 if boost else k
    d = k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():
        z = torch.randn(todo.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(todo.numel(), generator=generator, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / (k - 1.0))
    return out


def diffuse(x0: State, t: Tensor, eps: State, process: Process) -> State:
    """x_t = alpha(t) x0 + sigma(t) eps (eps already in each field's space); a categorical field is
    masked instead (``spaces.Categorical.diffuse``)."""
    t64 = t.to(torch.float64)
    a, s = process.alpha(t64), process.sigma(t64)
    out = {}
    for k, v in x0.fields.items():
        space = x0.space(k)
        if space.categorical:
            out[k] = space.diffuse(v, eps[k], x0.expand(t64, k))
        else:
            out[k] = v * x0.expand(a, k).to(v.dtype) + eps[k] * x0.expand(s, k).to(v.dtype)
    return x0.like(out).project()


# ----------------------------------------------------------------------------- conditions


def replace_condition(cond: Mapping[str, Any], drop: Tensor, null: Mapping[str, Any]) -> dict:
    """Each example's condition, replaced by ``null[key]`` where ``drop`` (B,) is True (the same
    examples for every key). Keys without a null value are an error."""
    out = {}
    for k, v in cond.items():
        if k not in null:
            raise ValueError(f"no null value given for condition '{k}' (the domain's null_condition)")
        if isinstance(v, Tensor):
            d = drop.to(v.device).reshape(-1, *([1] * (v.dim() - 1)))
            out[k] = torch.where(d, torch.as_tensor(null[k], dtype=v.dtype, device=v.device), v)
        else:
            out[k] = null[k]
    return out


def null_condition_like(cond: Any, null: Mapping[str, Any]) -> dict:
    """The null condition for every example of a batch, shaped like ``cond`` (a dict of tensors)."""
    if not isinstance(cond, Mapping) or not cond:
        raise ValueError("classifier-free guidance needs the batch condition as a dict of tensors "
                         f"(the domain's template gave {type(cond).__name__})")
    batch = next(iter(v for v in cond.values() if isinstance(v, Tensor))).shape[0]
    return replace_condition(cond, torch.ones(batch, dtype=torch.bool), null)


def drop_condition(cond: Mapping[str, Tensor], p: float, null: Mapping[str, Any], *,
                   generator: torch.Generator | None = None) -> dict:
    """Classifier-free guidance training: replace each example's condition by ``null[key]`` with
    probability p (the same examples are dropped for every key)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must lie in [0, 1], got {p}")
    if not cond:
        return dict(cond)
    batch = next(iter(cond.values())).shape[0]
    return replace_condition(cond, torch.rand(batch, generator=generator) < p, null)


# ----------------------------------------------------------------------------- the loss


@dataclass
class DiffusionObjective:
    """Weighted regression loss of a ``Denoiser``'s network output F on its target.

    Loss per example = w_F(t) * mean over real entries (all continuous fields, each scaled by its
    ``field_weights``) of |F - target|^2, plus for each categorical field its weight times the
    cross-entropy of F at the masked rows, summed over rows and divided by the example's rows;
    the batch loss is the mean over examples."""

    weighting: str = "uniform"
    time_sampler: str = "uniform"
    time_params: tuple = ()
    min_snr_gamma: float = ObjectiveConfig.min_snr_gamma
    sigma_data: float = SIGMA_DATA
    t_min: float = ObjectiveConfig.t_min
    sigma_min: float = SIGMA_MIN
    timesteps: int = ObjectiveConfig.timesteps
    field_weights: Mapping[str, float] | None = None

    CONFIG_KEYS: ClassVar[tuple] = ("min_snr_gamma", "sigma_data", "t_min", "sigma_min", "timesteps")

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{self.weighting}'; known: {WEIGHTINGS}")
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler '{self.time_sampler}'; known: {tuple(TIME_SAMPLERS)}")

    @classmethod
    def from_config(cls, obj: Mapping) -> "DiffusionObjective":
        """The objective of an ``[objective]`` table ("auto" resolved)."""
        obj = complete(obj)
        return cls(weighting=resolved_weighting(obj), time_sampler=resolved_time_sampler(obj),
                   time_params=tuple(obj["time_params"]), field_weights=dict(obj["field_weights"]),
                   **{k: obj[k] for k in cls.CONFIG_KEYS})

    def x0_weight(self, c: Coefficients) -> Tensor:
        """w(t) on the x0 error, (B,) float64."""
        snr = (c.alpha / c.sigma) ** 2
        if self.weighting == "snr":
            return snr
        if self.weighting == "min_snr":
            return torch.clamp(snr, max=self.min_snr_gamma)
        if self.weighting == "edm":
            return EDMPreconditioning(self.sigma_data).loss_weight(c.sigma / c.alpha)
        raise ValueError("uniform weighting has no x0 weight")

    def sample_t(self, batch: int, process: Process, generator=None, device=None) -> Tensor:
        return sample_time(self.time_sampler, batch, process, generator=generator, device=device,
                           params=self.time_params, t_min=self.t_min, sigma_min=self.sigma_min,
                           timesteps=self.timesteps)

    def per_example(self, denoiser: Denoiser, x0: State, t: Tensor, eps: State, cond: Any = None,
                    self_cond: Tensor | None = None, parts: dict | None = None) -> Tensor:
        """Weighted loss per example (B,) for given times and noise. ``self_cond`` (B,) bool: the
        examples whose network input gets the model's own x0 estimate, made first without
        gradient (self-conditioning, Chen et al. 2022); only for a self-conditioned denoiser.
        ``parts``: a dict to fill with each field's share of the loss per example (B,), float64,
        detached; the shares sum to the loss."""
        check_t(t)
        process, p = denoiser.process, denoiser.parameterisation
        x_t = diffuse(x0, t, eps, process)
        t64 = t.to(torch.float64)
        c = process.coefficients(t64)
        sc = p.scalings(c, t64)
        if self_cond is not None and getattr(denoiser, "self_conditioning", False):
            with torch.no_grad():
                first = denoiser(x_t, t.to(x0.dtype), cond)
            keep = self_cond.to(x0.device)
            self_cond = first.map(lambda k, v: v * x0.expand(keep.to(v.dtype), k))
        else:
            self_cond = None
        F = denoiser.raw(x_t, t.to(x0.dtype), cond, sc, self_cond=self_cond)
        a, b = sc.target_coefficients(c)
        total = torch.zeros(x0.batch_size, dtype=torch.float64, device=x0.device)
        entries = torch.zeros_like(total)
        discrete = torch.zeros_like(total)
        sums: dict[str, Tensor] = {}  # each field's weighted sum of squared errors, or its cross-entropy term
        for k in x0.fields:
            fw = (self.field_weights or {}).get(k, 1.0)
            space = x0.space(k)
            if space.categorical:
                ce = space.cross_entropy(F[k], x0[k], x_t[k])
                if k in x0.masks:
                    ce = ce * x0.masks[k].to(ce.dtype)
                rows = x0.layout(k).counts(x0[k][..., 0])
                sums[k] = fw * x0.layout(k).sum_per_example(ce) / rows.clamp_min(1)
                discrete = discrete + sums[k]
                continue
            target = x0[k] * x0.expand(a, k).to(x0[k].dtype) + eps[k] * x0.expand(b, k).to(x0[k].dtype)
            err = (F[k] - target).pow(2)
            if k in x0.masks:
                err = err * expand_mask(x0.masks[k], err).to(err.dtype)
            sums[k] = fw * x0.layout(k).sum_per_example(err).to(torch.float64)
            total = total + sums[k]
            entries = entries + x0.layout(k).counts(x0[k])
        w = (self.x0_weight(c) * sc.c_out**2).to(total.device) if self.weighting != "uniform" else None

        def continuous(v: Tensor) -> Tensor:  # a weighted squared error sum to its share of the loss
            v = v / entries.clamp_min(1)
            return v if w is None else v * w

        if parts is not None:
            for k, v in sums.items():
                parts[k] = (v if x0.space(k).categorical else continuous(v)).detach().to(torch.float64)
        return continuous(total) + discrete

    def __call__(self, denoiser: Denoiser, x0: State, cond: Any = None, *, generator: torch.Generator | None = None,
                 t: Tensor | None = None, eps: State | None = None) -> Tensor:
        """Scalar training loss; draws t and noise from ``generator`` unless given."""
        x0.check_layout()
        if t is None:
            t = self.sample_t(x0.batch_size, denoiser.process, generator=generator, device=x0.device)
        if eps is None:
            eps = x0.map(lambda k, v: x0.space(k).noise(
                torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device), x0.layout(k)))
        return self.per_example(denoiser, x0, t, eps, cond).mean()
