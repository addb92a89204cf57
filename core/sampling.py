"""Sampling a batch: the one path from a ``[sample]`` table to generated states.

    spec = SampleSpec.from_config(cfg["sample"], denoiser.process)     # built once
    out = generate_batch(domain, denoiser, seeds, cfg, data_config, spec)   # template -> x0
    out.x0, out.cond, out.network_calls

Batch generation, training-time sample metrics, the vocoder and every benchmark go through
:func:`sample_batch` (and :func:`generate_batch` where a domain makes the template), so a
``sample.*`` key means the same thing everywhere:

- ``sampler`` and its options (the sampler's own keyword arguments, e.g. ``eta`` for ddim,
  ``resample`` for repaint, ``rtol`` for dopri5: keys of the table once the sampler is chosen);
- ``steps`` and ``grid``: the time grid (``core.grids``);
- ``guidance``: classifier-free guidance weight w, on the domain's null condition; w > 0 needs a
  model trained with ``objective.condition_dropout > 0`` and a domain with a null condition;
- ``dtype``: the sampling precision ("" = the template's own; "float64" makes files
  bit-identical across batch sizes on the CPU);
- the domain's ``constraint`` hook pins known entries (inpainting); a sampler that needs one
  (repaint) says so (``needs_constraint``).

Network calls are counted where the network is called (a guided evaluation is two calls; the
final denoising call is a call), not inferred from the number of steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from .schema import Annotated, Check, ConfigError, Table, one_of, specs_of_signature
from .grids import GRIDS, make_grid, truncate
from .guidance import ClassifierFreeGuidance, Inpaint, sdedit_start
from .io import InputError
from .noise import ExampleNoise
from .objectives import null_condition_like
from .process import Process
from .samplers import SAMPLER_ARGS, SAMPLERS, prior
from .state import State

__all__ = ["SampleConfig", "SampleSpec", "Sampled", "sample_batch", "generate_batch", "guidance_null", "CountCalls",
           "sample_metrics"]

DTYPES = {"": None, "float32": torch.float32, "float64": torch.float64}


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def grid_names() -> list[str]:
    return sorted(GRIDS)


def dtype_names() -> list[str]:
    return list(DTYPES)


@dataclass(frozen=True)
class SampleConfig(Table):
    """The ``[sample]`` table (a domain adds its own keys by subclassing it); the chosen sampler's
    keyword options (its signature) are keys too."""

    selector: ClassVar[str] = "sampler"
    sampler: Annotated[str, one_of(sampler_names)] = "dpmpp_2m"  # a name in core.samplers.SAMPLERS
    steps: Annotated[int, Check(lo=1)] = 50  # intervals of the time grid
    grid: Annotated[str, one_of(grid_names)] = "karras"  # time grid: karras | log_snr | uniform | discrete
    guidance: Annotated[float, Check(lo=0)] = 0.0  # classifier-free guidance weight (0: the conditional model)
    batch_size: Annotated[int, Check(lo=1)] = 256  # examples sampled at once (never changes a sample beyond round-off)
    shard_size: Annotated[int, Check(lo=1)] = 100  # seeds per manifest part of batch generation
    use_ema: bool = True  # sample the EMA weights when the checkpoint has them
    dtype: Annotated[str, one_of(dtype_names)] = ""  # sampling precision: "" (the domain's own), float32, float64

    @classmethod
    def choice_fields(cls, value):
        fn = SAMPLERS.get(value)
        return None if fn is None else specs_of_signature(fn, skip=SAMPLER_ARGS)

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        p = cfg["objective"]["condition_dropout"]
        if table["guidance"] > 0 and not p > 0:
            raise ConfigError("sample.guidance", f"classifier-free guidance ({table['guidance']}) needs a model trained "
                                                 "with objective.condition_dropout > 0 (this one never learnt the "
                                                 "unconditional model); use guidance 0")


@dataclass(frozen=True)
class SampleSpec:
    """What a ``[sample]`` table means, built once: the sampler, its options, the time grid, the
    guidance weight and the precision."""

    name: str
    sampler: Callable[..., State]
    grid: Tensor
    guidance: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    dtype: torch.dtype | None = None

    @classmethod
    def from_config(cls, sample: Mapping, process: Process) -> "SampleSpec":
        """The spec of a ``[sample]`` table (keys it leaves out at SampleConfig's defaults)."""
        sample = {**SampleConfig.defaults(), **sample}
        name = sample["sampler"]
        if name not in SAMPLERS:
            raise InputError(f"sample.sampler: unknown sampler {name!r}; known: {', '.join(sampler_names())}")
        fn = SAMPLERS[name]
        opts = {k: sample[k] for k in specs_of_signature(fn, skip=SAMPLER_ARGS) if k in sample}
        grid = make_grid(sample["grid"], process, int(sample["steps"]))
        return cls(name, fn, grid, float(sample["guidance"]), opts, DTYPES[sample["dtype"]])

    @property
    def needs_constraint(self) -> bool:
        return bool(getattr(self.sampler, "needs_constraint", False))

    def record(self) -> dict:
        """How the samples were made, for manifests and cards."""
        return {"sampler": self.name, "steps": int(self.grid.numel() - 1), "guidance": self.guidance,
                **{k: v for k, v in self.options.items()}}


class CountCalls(torch.nn.Module):
    """A denoiser that counts the calls of the one it wraps (each call is one network evaluation)."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self.process = denoiser.process
        self.calls = 0

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        self.calls += 1
        return self.denoiser(x, t, cond)


class SelfConditioned(torch.nn.Module):
    """A self-conditioned denoiser as samplers use it (Chen et al. 2022): each call sees the x0
    estimate of the previous call with the same condition (none at the first), so guidance's
    conditional and unconditional evaluations each keep their own."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self.process = denoiser.process
        self.last: dict[int, State] = {}

    def forward(self, x: State, t: Tensor, cond: Any = None) -> State:
        key = id(cond)
        D = self.denoiser(x, t, cond, self_cond=self.last.get(key))
        self.last[key] = D
        return D


@dataclass
class Sampled:
    x0: State
    cond: Any
    network_calls: int  # network evaluations for the whole batch (each example saw this many)


def sample_batch(denoiser, like: State, cond: Any, noise: ExampleNoise, spec: SampleSpec, *,
                 null: Mapping | None = None, constraint: Inpaint | None = None,
                 start: "tuple[State, float] | None" = None) -> Sampled:
    """Sample one batch shaped like ``like`` (values ignored): prior noise at the grid's first
    time, the sampler with ``spec``'s options, classifier-free guidance on ``null`` when the
    weight is > 0, and ``constraint`` pinned after every step. ``noise`` holds one seed per example.
    ``start = (given, t0)``: SDEdit, from ``given`` noised to t0 over the grid truncated at t0."""
    if spec.dtype is not None:
        like, cond = like.to(dtype=spec.dtype), _cast(cond, spec.dtype)
        if constraint is not None:
            constraint = Inpaint(constraint.known.to(dtype=spec.dtype), constraint.mask, constraint.process)
    counted = CountCalls(SelfConditioned(denoiser) if getattr(denoiser, "self_conditioning", False) else denoiser)
    den = counted
    if spec.guidance > 0:
        if null is None:
            raise InputError(f"sample.guidance={spec.guidance}: classifier-free guidance needs the domain's null "
                             "condition (Domain.null_condition returned None); use guidance 0")
        den = ClassifierFreeGuidance(counted, spec.guidance, null_condition_like(cond, null))
    if spec.needs_constraint and constraint is None:
        raise InputError(f"sampler '{spec.name}' resamples around known data, and this configuration pins none "
                         "(nothing to inpaint)")
    kwargs = dict(spec.options)
    if constraint is not None:
        kwargs["constraint"] = constraint
    grid = spec.grid
    if start is None:
        x = prior(denoiser.process, like, noise, t=float(grid[0]))  # one noise object: draws never repeat
    else:
        given, t0 = start
        grid = truncate(grid, float(t0))
        x = sdedit_start(given.to(dtype=like.dtype), float(t0), denoiser.process, noise)
    x0 = spec.sampler(den, x, grid, cond, noise=noise, **kwargs)
    return Sampled(x0, cond, counted.calls)


def guidance_null(domain, cfg: Mapping, data_config: dict, spec: SampleSpec) -> Mapping | None:
    """The domain's null condition when the spec guides (an error when it has none), else None."""
    if spec.guidance <= 0:
        return None
    null = domain.null_condition(cfg, data_config)
    if null is None:
        raise InputError(f"domain '{domain.name}' has no null condition, so classifier-free guidance "
                         f"(sample.guidance={spec.guidance}) is not possible; use guidance 0")
    return null


def generate_batch(domain, denoiser, seeds: Sequence[int], cfg: Mapping, data_config: dict, spec: SampleSpec,
                   *, device: torch.device | str = "cpu", null: Mapping | None = None) -> Sampled:
    """The domain's template for ``seeds`` sampled with ``spec``: template -> constraint -> start
    (SDEdit) or prior -> sampler. ``null``: :func:`guidance_null` (looked up here when not given)."""
    device = torch.device(device)
    tpl = domain.template(seeds, cfg, data_config)
    if tpl.x0.batch_size != len(seeds):
        raise RuntimeError(f"domain '{domain.name}': template gave {tpl.x0.batch_size} examples for {len(seeds)} seeds")
    tpl = tpl.to(device)
    pin = domain.constraint(tpl, seeds, cfg, data_config)
    constraint = None
    if pin is not None:
        known, mask = pin
        constraint = Inpaint(known.to(device), {k: m.to(device) for k, m in mask.items()}, denoiser.process)
    start = domain.start(tpl, seeds, cfg, data_config)
    if start is not None:
        start = (start[0].to(device), float(start[1]))
    if null is None:
        null = guidance_null(domain, cfg, data_config, spec)
    noise = ExampleNoise(seeds, device=device)
    return sample_batch(denoiser, tpl.x0, tpl.cond, noise, spec, null=null, constraint=constraint, start=start)


@torch.no_grad()
def sample_metrics(domain, denoiser, cfg: Mapping, data_config: dict, seeds: Sequence[int],
                   device: torch.device | str = "cpu") -> dict:
    """The domain's metrics of samples for ``seeds`` made with the ``[sample]`` table (what
    training-time sample metrics report), plus ``network_calls`` per sample."""
    spec = SampleSpec.from_config(cfg["sample"], denoiser.process)
    if spec.dtype is not None:
        denoiser = copy.deepcopy(denoiser).to(spec.dtype)
    null = guidance_null(domain, cfg, data_config, spec)
    seeds, size = list(seeds), int(cfg["sample"]["batch_size"])
    objects, calls = [], 0
    for a in range(0, len(seeds), size):
        out = generate_batch(domain, denoiser, seeds[a:a + size], cfg, data_config, spec, device=device, null=null)
        calls = max(calls, out.network_calls)
        objects.extend(domain.decode(out.x0, out.cond, data_config))
    return {**domain.metrics(objects, data_config), "network_calls": calls}


def _cast(cond: Any, dtype: torch.dtype) -> Any:
    def cast(v):
        return v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v

    if isinstance(cond, Mapping):
        return {k: cast(v) for k, v in cond.items()}
    return cast(cond)
