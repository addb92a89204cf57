"""What a network predicts, written as the four scalings of Karras et al. (2022), Table 1.

With x_t = alpha x0 + sigma eps, every parameterisation here is affine in (x_t, network output F):

    D(x_t, t) = c_skip x_t + c_out F(c_in x_t, c_noise)          (D: the x0 estimate)

  eps       c_skip = 1/alpha,                    c_out = -sigma/alpha
  x0        c_skip = 0,                          c_out = 1
  v         c_skip = alpha/(alpha^2 + sigma^2),  c_out = -sigma/(alpha^2 + sigma^2)   (Salimans & Ho 2022)
  velocity  c_skip = sigma'/(sigma' alpha - sigma alpha'), c_out = -sigma/(sigma' alpha - sigma alpha')
            (F = d x_t/dt: flow matching, rectified flow)
with c_in = 1 and c_noise = t for these four; EDM's preconditioning (Karras et al. 2022) is the same
table in the VE variables x~ = x/alpha, s = sigma/alpha:
  edm       c_skip = sd^2/(s^2 + sd^2)/alpha, c_out = s sd/sqrt(s^2 + sd^2),
            c_in = 1/(alpha sqrt(s^2 + sd^2)), c_noise = log(s)/4          (sd = sigma_data)

Training regresses F on (x0 - c_skip x_t)/c_out, which is a x0 + b eps with the exact
coefficients a = (1 - c_skip alpha)/c_out, b = -c_skip sigma/c_out (no cancellation at small
sigma); an error in D is an error in F times 1/c_out, so a weight w(t) on the x0 error is
w c_out^2 on the F error.

Samplers see ONE contract (:class:`Denoiser`): (x_t, t, cond) -> x0-hat. The helper functions
below are the plain conversions between predictions (and the score), for users and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from .process import Coefficients, Process
from .state import State

PREDICTIONS = ("eps", "x0", "v", "velocity")
SIGMA_DATA = 0.5  # EDM's default standard deviation of the data


# ----------------------------------------------------------------------------- plain conversions


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


def field_coefficients(process: Process, t: Tensor, state: State, name: str) -> Coefficients:
    """alpha, sigma and derivatives at per-example times, broadcast to field ``name`` (its dtype)."""
    x = state[name]
    return process.coefficients(t).map(lambda v: state.expand(v, name).to(x.dtype))


# ----------------------------------------------------------------------------- the four scalings


@dataclass(frozen=True)
class Scalings:
    """c_skip, c_out, c_in, c_noise at per-example times: (B,) float64."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor

    def target_coefficients(self, c: Coefficients) -> tuple[Tensor, Tensor]:
        """(a, b) with F's regression target (x0 - c_skip x_t)/c_out = a x0 + b eps."""
        return (1.0 - self.c_skip * c.alpha) / self.c_out, -self.c_skip * c.sigma / self.c_out


class Parameterisation:
    """What the network predicts; ``scalings`` gives its row of Karras et al. Table 1."""

    name = "parameterisation"

    def scalings(self, c: Coefficients, t: Tensor) -> Scalings:
        raise NotImplementedError

    def config(self) -> dict:
        return {"prediction": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Parameterisation):
    """F = eps: c_skip = 1/alpha, c_out = -sigma/alpha (Ho et al. 2020)."""

    name = "eps"

    def scalings(self, c, t):
        return Scalings(1.0 / c.alpha, -c.sigma / c.alpha, torch.ones_like(c.alpha), t)


class X0Prediction(Parameterisation):
    """F = x0: c_skip = 0, c_out = 1."""

    name = "x0"

    def scalings(self, c, t):
        return Scalings(torch.zeros_like(c.alpha), torch.ones_like(c.alpha), torch.ones_like(c.alpha), t)


class VPrediction(Parameterisation):
    """F = v = alpha eps - sigma x0: c_skip = alpha/(alpha^2+sigma^2), c_out = -sigma/(alpha^2+sigma^2)."""

    name = "v"

    def scalings(self, c, t):
        n = c.alpha**2 + c.sigma**2
        return Scalings(c.alpha / n, -c.sigma / n, torch.ones_like(c.alpha), t)


class VelocityPrediction(Parameterisation):
    """F = dx_t/dt = alpha' x0 + sigma' eps: with W = sigma' alpha - sigma alpha',
    c_skip = sigma'/W, c_out = -sigma/W."""

    name = "velocity"

    def scalings(self, c, t):
        w = c.d_sigma * c.alpha - c.sigma * c.d_alpha
        return Scalings(c.d_sigma / w, -c.sigma / w, torch.ones_like(c.alpha), t)


@dataclass(frozen=True)
class EDMPreconditioning(Parameterisation):
    """Karras et al. (2022), Table 1, in the VE variables x~ = x/alpha and s = sigma~ = sigma/alpha:
    D(x~) = c_skip x~ + c_out F(c_in x~, c_noise)."""

    sigma_data: float = SIGMA_DATA
    name = "edm"

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

    def scalings(self, c, t):
        s = c.sigma / c.alpha
        return Scalings(self.c_skip(s) / c.alpha, self.c_out(s), self.c_in(s) / c.alpha, self.c_noise(s))

    def config(self) -> dict:
        return {"prediction": "x0", "edm_preconditioning": True, "sigma_data": self.sigma_data}

    def __repr__(self) -> str:
        return f"EDMPreconditioning(sigma_data={self.sigma_data})"


PARAMETERISATIONS: dict[str, type[Parameterisation]] = {
    c.name: c for c in (EpsPrediction, X0Prediction, VPrediction, VelocityPrediction)}


def make_parameterisation(prediction: str | Parameterisation, edm_preconditioning: bool = False,
                     sigma_data: float = SIGMA_DATA) -> Parameterisation:
    """The parameterisation of a config: ``prediction`` by name, or EDM's preconditioning (which
    wraps an x0 prediction)."""
    if isinstance(prediction, Parameterisation):
        return prediction
    if prediction not in PARAMETERISATIONS:
        raise ValueError(f"unknown prediction '{prediction}'; known: {PREDICTIONS}")
    if edm_preconditioning:
        if prediction != "x0":
            raise ValueError("EDM preconditioning wraps an x0 (D) prediction; use prediction='x0'")
        return EDMPreconditioning(float(sigma_data))
    return PARAMETERISATIONS[prediction]()


def x0_error_gain(p: Parameterisation, c: Coefficients, t: Tensor) -> Tensor:
    """|d(F error) / d(x0 error)| at fixed x_t: 1/|c_out|."""
    return 1.0 / p.scalings(c, t).c_out.abs()


# ----------------------------------------------------------------------------- the one contract


class DenoiserFn(Protocol):
    """What every sampler sees: x0-hat for (x_t, t, cond); t is a (B,) tensor in [0, 1]."""

    process: Process

    def __call__(self, x: State, t: Tensor, cond: Any = None) -> State: ...


Network = Callable[[State, Tensor, Any], State]


class NetworkContractError(TypeError):
    """The network returned something other than a State with the diffused fields."""


class Denoiser(torch.nn.Module):
    """Wrap a network into the x0-hat contract: D = c_skip x_t + c_out F(c_in x_t, c_noise).

    ``network(x_in, c_noise, cond) -> State`` of raw outputs F for the diffused fields (the fields
    of its input, each of the input's shape). ``parameterisation``: a name in PREDICTIONS or a
    :class:`Parameterisation` (e.g. ``EDMPreconditioning(0.5)``). The output is projected into
    each field's space. A categorical field (``spaces.Categorical``) is not scaled: the network
    sees its one-hot rows and gives logits, and D is their posterior mean.

    ``self_conditioning`` (Chen et al. 2022): the network also sees an x0 estimate of the same
    example, as fields ``"sc:<name>"`` beside the state's own (zeros when there is none yet); the
    objective makes it with a first pass, samplers pass the previous step's D."""

    def __init__(self, network: Network, process: Process, parameterisation: str | Parameterisation = "v",
                 self_conditioning: bool = False):
        super().__init__()
        self.network = network
        self.process = process
        self.parameterisation = make_parameterisation(parameterisation)
        self.self_conditioning = bool(self_conditioning)

    @property
    def prediction(self) -> str:
        return self.parameterisation.name

    def scalings(self, t: Tensor) -> Scalings:
        t64 = t.to(torch.float64)
        return self.parameterisation.scalings(self.process.coefficients(t64), t64)

    def network_input(self, x: State, sc: Scalings, self_cond: State | None = None) -> State:
        """c_in x_t (categorical fields as they are), with the self-conditioning fields."""
        x_in = x.like({k: v if x.space(k).categorical else v * x.expand(sc.c_in, k).to(v.dtype)
                       for k, v in x.fields.items()})
        if not self.self_conditioning:
            return x_in
        given = self_cond if self_cond is not None else x.map(lambda k, v: torch.zeros_like(v))
        return x_in.with_prefixed(given.detach(), SELF_COND)

    def raw(self, x: State, t: Tensor, cond: Any = None, sc: Scalings | None = None,
            self_cond: State | None = None) -> State:
        """The network's own output F for (x_t, t)."""
        sc = self.scalings(t) if sc is None else sc
        out = self.network(self.network_input(x, sc, self_cond), sc.c_noise.to(t.dtype), cond)
        check_network_output(out, x)
        return x.like({k: out[k] for k in x.fields})

    def forward(self, x: State, t: Tensor, cond: Any = None, self_cond: State | None = None) -> State:
        """D = c_skip x + c_out F, combined in float64 (eps-prediction near alpha = 0 subtracts two
        terms of size 1/alpha: in float32 that would cost digits), returned in x's dtype; the
        posterior mean of a categorical field."""
        sc = self.scalings(t)
        F = self.raw(x, t, cond, sc, self_cond)
        out = {}
        for k, v in x.fields.items():
            space = x.space(k)
            if space.categorical:
                out[k] = space.posterior_mean(v, F[k])
                continue
            d = v.to(torch.float64) * x.expand(sc.c_skip, k) + F[k].to(torch.float64) * x.expand(sc.c_out, k)
            out[k] = d.to(v.dtype)
        return x.like(out).project()


SELF_COND = "sc:"  # the prefix of the self-conditioning fields of a network's input


def check_network_output(out: Any, x: State) -> None:
    """The network contract: a State holding every diffused field, each shaped like the input's
    (cheap: no device sync). Errors name the domain's ``build_network``."""
    if not isinstance(out, State):
        raise NetworkContractError(f"the network (the domain's build_network) returned {type(out).__name__}; it must "
                                   f"return a State with the fields {sorted(x.fields)} (e.g. x.like({{...}}))")
    missing = [k for k in x.fields if k not in out.fields]
    if missing:
        raise NetworkContractError(f"the network (the domain's build_network) returned no field {missing[0]!r}; it "
                                   f"must return every diffused field: {sorted(x.fields)}")
    for k, v in x.fields.items():
        if tuple(out[k].shape) != tuple(v.shape):
            raise NetworkContractError(f"the network (the domain's build_network) returned field {k!r} of shape "
                                       f"{tuple(out[k].shape)} for an input of shape {tuple(v.shape)}")

