"""Sampler benchmark: accuracy on an exact target and throughput, ours against diffusers.

Accuracy. The data is the 8-Gaussian ring (radius 4, std 0.2), whose ideal denoiser E[x0 | x_t]
is known in closed form (``ExactDenoiser``), so a sampler's error is pure integration error: the
RMSE (root mean over samples of the squared Euclidean distance) between its output and a
reference solution of the same probability-flow ODE from the same initial noise (our Heun with
many steps, float64). Every row is given a budget of network evaluations (NFE) and the number of
steps is chosen so that the NFE *counted on the denoiser* does not exceed it.

  A. Our samplers on EDM's variance-exploding process (sigma 80 -> 0.002), the setting of the
     regression anchors in shared/reference/core.md.
  B. Like for like with diffusers: one DDPM beta schedule; our samplers run on
     ``TabulatedVP.from_alphas_cumprod(scheduler.alphas_cumprod)``; everybody starts at diffusers'
     timestep 999 (our t = 1) from the same initial state, and each library uses its default grid
     (plus diffusers' ``use_karras_sigmas=True`` variants, and our DPM-Solver++ 2M on diffusers'
     own sigmas to separate the solver from the grid).

Throughput. Samples per second at batch 4096 in float32 for our samplers at 20 NFE and for
diffusers' DPMSolverMultistepScheduler at 20 steps, and the per-step overhead: time per step
minus the time of the denoiser call(s) alone.

Run ``python bench/samplers.py`` (about a minute on 2 CPU cores), ``--quick`` for a smaller run,
``--no-append`` to leave bench/RESULTS.md alone.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, import_package, run_header, sync, table  # noqa: E402

import_package()

from sciffusion.core import grids  # noqa: E402
from sciffusion.core import samplers as S  # noqa: E402
from sciffusion.core.noise import ExampleNoise  # noqa: E402
from sciffusion.core.process import KarrasVE, Process, TabulatedVP  # noqa: E402
from sciffusion.core.targets import ExactDenoiser, GaussianMixture  # noqa: E402

try:
    import diffusers
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
    )
except ImportError:  # the benchmark still runs our rows
    diffusers = None

BUDGETS = (5, 10, 20, 50)
BETAS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
SIGMA_MIN = 0.002  # our Karras grids' default lower noise level (VE-equivalent sigma)
SANITY_TOL = 0.02  # max RMSE of every diffusers ODE sampler at many steps (first order: ~0.004 at 500)
SANITY_RATIO = 0.5  # ... and at most this fraction of its own RMSE at the largest budget

OURS: dict[str, Callable] = {
    "euler": S.sample_euler,
    "heun": S.sample_heun,
    "dpmpp_2m": S.sample_dpmpp_2m,
    "ddim": partial(S.sample_ddim, eta=0.0),
    "ddpm": S.sample_ddpm,
    "euler_maruyama": S.sample_euler_maruyama,
}


@dataclass(frozen=True)
class Config:
    """Sizes of one run."""

    batch: int  # samples in the accuracy sections
    ref_steps: int  # Heun steps of the reference solutions
    sanity_steps: int  # steps of the "many steps" column (diffusers must converge there)
    tp_batch: int  # batch of the throughput section
    tp_reps: int  # timed repetitions per throughput row (medians reported)


FULL = Config(batch=2000, ref_steps=1000, sanity_steps=500, tp_batch=4096, tp_reps=7)
QUICK = Config(batch=512, ref_steps=400, sanity_steps=200, tp_batch=4096, tp_reps=3)


# ----------------------------------------------------------------------------- small helpers


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def scalar(fn: Callable[[Tensor], Tensor], t: float) -> float:
    """A process function evaluated at one float64 time, as a Python float."""
    return float(fn(torch.tensor([t], dtype=torch.float64)))


def rmse(x: Tensor, ref: Tensor) -> float:
    """Root mean over samples of the squared Euclidean distance."""
    d = (x.to(torch.float64) - ref.to(torch.float64)).reshape(x.shape[0], -1)
    return float(d.pow(2).sum(1).mean().sqrt())


def fmt(v: float | None) -> str:
    """Compact number for the tables."""
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.2e}"


def first_guess(name: str, budget: int) -> int:
    """Steps that fit a budget when the last step is free of a second evaluation."""
    return (budget + 1) // 2 if name == "heun" else budget


# ----------------------------------------------------------------------------- the problem


@dataclass
class Problem:
    """One exact-target ODE problem: process, exact denoiser and the standard initial noise z."""

    process: Process
    target: GaussianMixture
    denoiser: ExactDenoiser
    z: Tensor  # (B, 2) standard normal, the same for every sampler

    def start(self, t0: float = 1.0) -> Tensor:
        """Initial state at time t0: sigma(t0) z (what ``samplers.prior`` gives)."""
        return self.z * scalar(self.process.sigma, t0)

    def state(self, x: Tensor):
        """Wrap a (B, 2) tensor as the target's state."""
        return self.target.state(x)

    def run(self, sampler: Callable, x: Tensor, grid: Tensor, **kw) -> tuple[Tensor, int]:
        """Run one of our samplers; returns the samples and the NFE counted on the denoiser."""
        self.denoiser.calls = 0
        out = sampler(self.denoiser, self.state(x), grid, **kw)
        return out[self.target.field], self.denoiser.calls


def make_problem(process: Process, batch: int, device: torch.device, dtype=torch.float64) -> Problem:
    """The ring target under ``process`` with per-example seeded noise."""
    target = GaussianMixture.ring()
    like = target.state(torch.zeros(batch, 2, dtype=dtype, device=device))
    z = ExampleNoise(torch.arange(batch)).normal(like)[target.field]
    return Problem(process, target, ExactDenoiser(target, process), z)


def sigma_tilde(process: Process, t: float) -> float:
    """VE-equivalent noise level sigma/alpha of a process at time t."""
    return scalar(process.sigma_tilde, t)


def karras_grid(process: Process, steps: int, t0: float = 1.0) -> Tensor:
    """Our default Karras rho=7 grid from time t0 (its VE sigma) down to SIGMA_MIN, then t = 0."""
    g = grids.karras(process, steps, sigma_min=SIGMA_MIN, sigma_max=sigma_tilde(process, t0))
    g[0] = t0
    return g


def log_snr_grid(process: Process, steps: int) -> Tensor:
    """Log-SNR-uniform grid over the same noise range as ``karras_grid``."""
    t_min = float(process.t_of_sigma_tilde(torch.tensor(SIGMA_MIN, dtype=torch.float64)))
    return grids.log_snr_uniform(process, steps, t_max=1.0, t_min=t_min)


def reference(problem: Problem, steps: int, t0: float = 1.0) -> Tensor:
    """Fine Heun solution of the PF-ODE from sigma(t0) z."""
    x, _ = problem.run(S.sample_heun, problem.start(t0), karras_grid(problem.process, steps, t0))
    return x


def fit_budget(run: Callable[[int], tuple[Tensor, int]], budget: int, guess: int) -> tuple[Tensor, int]:
    """Run with the most steps whose counted NFE fits the budget (starting from ``guess``)."""
    steps = guess
    while steps >= 1:
        x, nfe = run(steps)
        if nfe <= budget:
            return x, nfe
        steps -= 1
    raise RuntimeError(f"no step count fits a budget of {budget} NFE")


def cell(err: float, nfe: int, budget: int) -> str:
    """RMSE, with the counted NFE in brackets when it is not the budget."""
    return fmt(err) if nfe == budget else f"{fmt(err)} ({nfe})"


# ----------------------------------------------------------------------------- section A


def section_ours_ve(cfg: Config, device: torch.device, log) -> str:
    """Our samplers on KarrasVE(80): RMSE per NFE budget (the core.md anchor setting)."""
    p = KarrasVE(80.0)
    prob = make_problem(p, cfg.batch, device)
    ref = reference(prob, cfg.ref_steps)
    ref_half = reference(prob, cfg.ref_steps // 2)
    log(f"A: reference ready (Heun {cfg.ref_steps} steps)")

    def ve_grid(steps: int) -> Tensor:
        return grids.karras(p, steps, sigma_min=SIGMA_MIN, sigma_max=80.0)

    def ve_log_snr(steps: int) -> Tensor:
        return grids.log_snr_uniform(p, steps, t_max=1.0, t_min=SIGMA_MIN / 80.0)

    rows_spec = [
        ("euler", "karras rho=7"),
        ("heun", "karras rho=7"),
        ("dpmpp_2m", "karras rho=7"),
        ("dpmpp_2m", "log-SNR uniform"),
        ("ddim", "karras rho=7"),
    ]
    rows = []
    for name, grid_name in rows_spec:
        make = ve_grid if grid_name.startswith("karras") else ve_log_snr
        cells = []
        for b in BUDGETS:
            x, nfe = fit_budget(lambda n: prob.run(OURS[name], prob.start(), make(n)), b, first_guess(name, b))
            cells.append(cell(rmse(x, ref), nfe, b))
        rows.append([f"ours {name}", grid_name] + cells)
    note = (
        f"KarrasVE(sigma_max=80), sigma 80 -> {SIGMA_MIN}, batch {cfg.batch}, float64; reference: our Heun, "
        f"{cfg.ref_steps} Karras steps (its distance to the {cfg.ref_steps // 2}-step solution: "
        f"{fmt(rmse(ref_half, ref))})."
    )
    return "### A. Exact ring target, EDM VE process: RMSE vs reference\n\n" + note + "\n\n" + table(
        ["sampler", "grid"] + [f"NFE {b}" for b in BUDGETS], rows
    )


# ----------------------------------------------------------------------------- diffusers driving


@dataclass(frozen=True)
class DiffusersSpec:
    """One diffusers configuration: scheduler class, extra config and how its sample is scaled."""

    label: str
    cls_name: str
    kwargs: dict
    kind: str  # "ddim", "euler", "heun" or "dpm"

    def make(self):
        """A fresh scheduler with the benchmark's beta schedule and this row's options."""
        cls = {
            "DDIMScheduler": DDIMScheduler,
            "EulerDiscreteScheduler": EulerDiscreteScheduler,
            "HeunDiscreteScheduler": HeunDiscreteScheduler,
            "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
        }[self.cls_name]
        return cls(**BETAS, **self.kwargs)

    @property
    def ve_scaled(self) -> bool:
        """Euler/Heun discrete schedulers keep x~ = x / alpha and scale the model input back."""
        return self.kind in ("euler", "heun")

    def steps_for(self, budget: int) -> int:
        """Inference steps that fit an NFE budget."""
        return (budget + 1) // 2 if self.kind == "heun" else budget

    def nfe(self, steps: int) -> int:
        """Network evaluations of one run (Heun: two per step except the last, which steps to sigma = 0)."""
        return 2 * steps - 1 if self.kind == "heun" else steps


DPM_KW = {"algorithm_type": "dpmsolver++", "solver_order": 2}
KARRAS = {"use_karras_sigmas": True}
DIFFUSERS_SPECS = [
    DiffusersSpec("DDIMScheduler, trailing spacing", "DDIMScheduler",
                  {"clip_sample": False, "timestep_spacing": "trailing"}, "ddim"),
    DiffusersSpec("DDIMScheduler, default leading spacing *", "DDIMScheduler", {"clip_sample": False}, "ddim"),
    DiffusersSpec("EulerDiscreteScheduler, default", "EulerDiscreteScheduler", {}, "euler"),
    DiffusersSpec("EulerDiscreteScheduler, karras sigmas", "EulerDiscreteScheduler", dict(KARRAS), "euler"),
    DiffusersSpec("HeunDiscreteScheduler, default", "HeunDiscreteScheduler", {}, "heun"),
    DiffusersSpec("HeunDiscreteScheduler, karras sigmas", "HeunDiscreteScheduler", dict(KARRAS), "heun"),
    DiffusersSpec("DPMSolverMultistep (++, order 2), default", "DPMSolverMultistepScheduler", dict(DPM_KW), "dpm"),
    DiffusersSpec("DPMSolverMultistep (++, order 2), karras sigmas", "DPMSolverMultistepScheduler",
                  {**DPM_KW, **KARRAS}, "dpm"),
]


class EpsModel:
    """The diffusers-facing network: epsilon predicted from our exact x0-hat.

    Called with the model input (variance-preserving x, i.e. after ``scale_model_input``) and the
    VE-equivalent noise level sigma~ = sigma/alpha that the scheduler's update uses for this call.
    The denoiser runs at the process time with that log-SNR, so it is the same counted network as
    in our rows; eps = (x - alpha x0) / sigma with alpha = 1/sqrt(1 + sigma~^2), sigma = sigma~ alpha,
    exactly the relation the schedulers use to turn eps back into x0.
    """

    def __init__(self, problem: Problem):
        self.problem = problem

    def __call__(self, x: Tensor, sig: float) -> Tensor:
        p = self.problem.process
        t = float(p.t_of_sigma_tilde(torch.tensor(sig, dtype=torch.float64)).clamp(0.0, 1.0))
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        d = self.problem.denoiser(self.problem.state(x), tt)[self.problem.target.field]
        a = 1.0 / math.sqrt(1.0 + sig * sig)
        return (x - d * a) / (sig * a)


def noise_level(scheduler, spec: DiffusersSpec, i: int, timestep: Tensor) -> float:
    """sigma~ of the i-th model call, read from the scheduler's own tables."""
    if spec.kind == "ddim":
        ac = float(scheduler.alphas_cumprod[int(timestep)])
        return math.sqrt((1.0 - ac) / ac)
    if spec.kind in ("euler", "heun"):  # step_index is set by scale_model_input
        return float(scheduler.sigmas[scheduler.step_index])
    return float(scheduler.sigmas[i])  # DPMSolverMultistep: one model call per entry of sigmas


def first_time(spec: DiffusersSpec, steps: int) -> float:
    """Our time of the scheduler's first timestep k: t = (k + 1) / T."""
    sch = spec.make()
    sch.set_timesteps(steps)
    return (float(sch.timesteps[0]) + 1.0) / sch.config.num_train_timesteps


def run_diffusers(spec: DiffusersSpec, steps: int, problem: Problem, x_vp: Tensor, t0: float,
                  model: Callable[[Tensor, float], Tensor] | None = None, scheduler=None) -> tuple[Tensor, int]:
    """The standard denoising loop of a diffusers pipeline with the exact eps model.

    ``x_vp`` is the initial state in variance-preserving scaling at our time t0; VE-scaled
    schedulers get x~ = x / alpha(t0) (= init_noise_sigma * z). A pipeline builds its scheduler
    once and calls ``set_timesteps`` per generation; pass ``scheduler`` to do the same. Returns the
    clean samples and the NFE counted on the denoiser.
    """
    model = model or EpsModel(problem)
    sch = scheduler if scheduler is not None else spec.make()
    sch.set_timesteps(steps, device=x_vp.device)
    x = x_vp / scalar(problem.process.alpha, t0) if spec.ve_scaled else x_vp
    problem.denoiser.calls = 0
    for i, ts in enumerate(sch.timesteps):
        model_in = sch.scale_model_input(x, ts)
        eps = model(model_in, noise_level(sch, spec, i, ts))
        x = sch.step(eps, ts, x).prev_sample
    return x, problem.denoiser.calls


def diffusers_grid(problem: Problem, spec: DiffusersSpec, steps: int) -> Tensor:
    """Our time grid through exactly the noise levels a diffusers DPMSolverMultistep run visits."""
    sch = spec.make()
    sch.set_timesteps(steps)
    sig = sch.sigmas.to(torch.float64)[:-1]
    t = problem.process.t_of_sigma_tilde(sig).clamp(0.0, 1.0)
    t[0] = (float(sch.timesteps[0]) + 1.0) / sch.config.num_train_timesteps
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


# ----------------------------------------------------------------------------- section B


def ddpm_alphas_cumprod() -> Tensor:
    """alphas_cumprod of the benchmark's beta schedule: diffusers' own table when it is installed,
    else the same float32 computation (linear betas, cumulative product of 1 - beta)."""
    if diffusers is not None:
        return DDIMScheduler(**BETAS).alphas_cumprod
    betas = torch.linspace(BETAS["beta_start"], BETAS["beta_end"], BETAS["num_train_timesteps"], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


class References:
    """Reference solutions of one problem, cached by start time."""

    def __init__(self, problem: Problem, steps: int):
        self.problem, self.steps, self.cache = problem, steps, {}

    def __call__(self, t0: float) -> Tensor:
        """The main reference from t0 = 1; other starts (DDIM's leading spacing) get half the steps."""
        key = round(t0, 9)
        if key not in self.cache:
            steps = self.steps if key == 1.0 else self.steps // 2
            self.cache[key] = reference(self.problem, steps, t0)
        return self.cache[key]


def ours_cells(prob: Problem, name: str, make_grid: Callable[[int], Tensor], ref: Tensor, cfg: Config) -> list[str]:
    """RMSE of one of our samplers per NFE budget, then at ``cfg.sanity_steps`` steps."""
    def run(steps: int) -> tuple[Tensor, int]:
        return prob.run(OURS[name], prob.start(), make_grid(steps))

    cells = []
    for b in BUDGETS:
        x, nfe = fit_budget(run, b, first_guess(name, b))
        cells.append(cell(rmse(x, ref), nfe, b))
    x, nfe = run(cfg.sanity_steps)
    return cells + [f"{fmt(rmse(x, ref))} ({nfe})"]


def diffusers_cells(prob: Problem, spec: DiffusersSpec, refs: References, cfg: Config, failures: list[str]) -> list[str]:
    """RMSE of one diffusers configuration per NFE budget, then at ``cfg.sanity_steps`` steps, where
    it must have converged (failures are appended to ``failures``). The NFE is counted and checked."""
    cells, errs = [], []
    for b in list(BUDGETS) + [cfg.sanity_steps]:
        steps = spec.steps_for(b) if b in BUDGETS else b
        t0 = first_time(spec, steps)
        x, nfe = run_diffusers(spec, steps, prob, prob.start(t0), t0)
        if nfe != spec.nfe(steps):
            raise AssertionError(f"{spec.label}: {nfe} denoiser calls for {steps} steps, expected {spec.nfe(steps)}")
        errs.append(rmse(x, refs(t0)))
        cells.append(cell(errs[-1], nfe, b) if b in BUDGETS else f"{fmt(errs[-1])} ({nfe})")
    err, err_budget = errs[-1], errs[-2]
    if not (err < SANITY_TOL and err < SANITY_RATIO * err_budget):
        failures.append(f"{spec.label}: RMSE {err:.3g} at {cfg.sanity_steps} steps (must be below {SANITY_TOL} "
                        f"and below {SANITY_RATIO} x its RMSE {err_budget:.3g} at NFE {BUDGETS[-1]})")
    return cells


def section_vs_diffusers(cfg: Config, device: torch.device, log) -> tuple[str, list[str]]:
    """Ours and diffusers on one DDPM schedule; returns the markdown and the sanity failures."""
    p = TabulatedVP.from_alphas_cumprod(ddpm_alphas_cumprod())
    prob = make_problem(p, cfg.batch, device)
    refs = References(prob, cfg.ref_steps)
    ref = refs(1.0)
    ref_half = reference(prob, cfg.ref_steps // 2)
    log(f"B: reference ready (Heun {cfg.ref_steps} steps)")

    header = ["library", "sampler", "grid"] + [f"NFE {b}" for b in BUDGETS] + [f"{cfg.sanity_steps} steps (NFE)"]
    rows, failures = [], []

    ours_default = "karras rho=7 (ours default)"
    ours_rows = [
        ("euler", ours_default, partial(karras_grid, p)),
        ("heun", ours_default, partial(karras_grid, p)),
        ("dpmpp_2m", ours_default, partial(karras_grid, p)),
        ("dpmpp_2m", "log-SNR uniform", partial(log_snr_grid, p)),
        ("ddim", ours_default, partial(karras_grid, p)),
    ]
    if diffusers is not None:  # the same solver on exactly diffusers' DPM noise levels
        ours_rows.append(("dpmpp_2m", "diffusers' DPM default sigmas", partial(diffusers_grid, prob, DIFFUSERS_SPECS[-2])))
        ours_rows.append(("dpmpp_2m", "diffusers' DPM karras sigmas", partial(diffusers_grid, prob, DIFFUSERS_SPECS[-1])))
    for name, grid_name, make_grid in ours_rows:
        rows.append(["ours", name, grid_name] + ours_cells(prob, name, make_grid, ref, cfg))
    log("B: our rows done")

    if diffusers is None:
        rows.append(["diffusers", "not installed: rows skipped", "-"] + ["-"] * (len(BUDGETS) + 1))
    else:
        for spec in DIFFUSERS_SPECS:
            rows.append(["diffusers", spec.label, "scheduler's own"] + diffusers_cells(prob, spec, refs, cfg, failures))
            log(f"B: {spec.label} done")

    notes = [
        f"Schedule: DDPM {BETAS['beta_schedule']} betas {BETAS['beta_start']}..{BETAS['beta_end']}, "
        f"{BETAS['num_train_timesteps']} steps (sigma~ = sigma/alpha from {sigma_tilde(p, 1.0):.4g} at timestep 999 "
        f"to {sigma_tilde(p, 0.001):.3g} at timestep 0); our process: TabulatedVP.from_alphas_cumprod, "
        "timestep k <-> t = (k+1)/1000.",
        f"Batch {cfg.batch}, float64 states (diffusers' Euler/DPM steps compute in float32 internally). "
        f"Reference: our Heun, {cfg.ref_steps} Karras steps from t = 1 "
        f"(distance to the {cfg.ref_steps // 2}-step solution: {fmt(rmse(ref_half, ref))}).",
        "Every row starts from the same state sigma(t=1) z at timestep 999; cells are RMSE, with the NFE counted "
        "on the denoiser in brackets where it differs from the budget. t = 0 of our process is exactly clean "
        f"(sigma~ = {sigma_tilde(p, 0.0):.2g}), so no final denoising call is made.",
        "The diffusers model is the same exact denoiser, evaluated at the noise level the scheduler's update uses "
        "(sigmas[step_index], or alphas_cumprod[timestep] for DDIM) and returned as epsilon. Every scheduler gets "
        "the beta schedule explicitly (HeunDiscreteScheduler's own default is 0.00085..0.012); DDIM runs with "
        "clip_sample=False (the ring is not in [-1, 1]).",
        f"Grids: ours default = Karras rho=7 from sigma~ {sigma_tilde(p, 1.0):.4g} to {SIGMA_MIN}, then t = 0; "
        f"log-SNR uniform over the same range; diffusers' karras sigmas = rho=7 from {sigma_tilde(p, 1.0):.4g} to "
        f"{sigma_tilde(p, 0.001):.3g}, then sigma 0; diffusers' defaults = 'linspace' timesteps ending at sigma 0 "
        "(DPMSolverMultistep's last model call is at timestep ~1000/steps, followed by one first-order step). "
        "Our last step into the data end is first order for dpmpp_2m and an Euler step for heun, as in diffusers; "
        "the rows of ours on diffusers' sigmas compare the two solvers on identical time points.",
        "* DDIMScheduler's default 'leading' spacing starts at timestep 1000 - 1000/steps (e.g. 900 for 10 steps): "
        "that row starts from sigma(t0) z at its own first timestep and is compared with a reference from there "
        f"(Heun, {cfg.ref_steps // 2} steps).",
        f"Sanity check (asserted): at {cfg.sanity_steps} steps every diffusers row is below RMSE {SANITY_TOL} and "
        f"below {SANITY_RATIO} x its own RMSE at NFE {BUDGETS[-1]}.",
    ]
    md = "### B. Exact ring target, DDPM schedule: ours vs diffusers, RMSE vs reference\n\n" + "\n".join(
        f"- {n}" for n in notes
    ) + "\n\n" + table(header, rows)
    return md, failures


# ----------------------------------------------------------------------------- throughput


class CallTimer:
    """Wraps the network (ours: the x0 denoiser, which keeps its ``process``; diffusers: the eps
    model) and adds up the wall time spent inside its calls, synchronising on CUDA."""

    def __init__(self, fn: Callable, device: torch.device):
        self.fn, self.device, self.seconds = fn, device, 0.0
        self.process = getattr(fn, "process", None)

    def __call__(self, *args):
        sync(self.device)
        t0 = time.perf_counter()
        out = self.fn(*args)
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


@dataclass
class Timed:
    """One throughput row: how to run it (given the network to call) and what was measured."""

    library: str
    name: str
    steps: int
    run: Callable[[Callable], object]
    net: Callable
    nfe: int = 0
    runs: list = field(default_factory=list)  # seconds per plain run
    overheads: list = field(default_factory=list)  # seconds per step, one per timed run
    inside: list = field(default_factory=list)  # seconds inside the network, one per timed run

    def measure(self, device: torch.device) -> None:
        """One plain timed run (for samples/s) and one with every network call timed (for overhead)."""
        sync(device)
        t0 = time.perf_counter()
        self.run(self.net)
        sync(device)
        self.runs.append(time.perf_counter() - t0)
        timer = CallTimer(self.net, device)
        sync(device)
        t0 = time.perf_counter()
        self.run(timer)
        sync(device)
        total = time.perf_counter() - t0
        self.overheads.append((total - timer.seconds) / self.steps)
        self.inside.append(timer.seconds)

    def row(self, batch: int) -> list[str]:
        """The table row of this measurement."""
        run = statistics.median(self.runs)
        return [self.library, self.name, str(self.steps), str(self.nfe), f"{run * 1e3:.1f}", f"{batch / run:,.0f}",
                f"{statistics.median(self.inside) * 1e3:.1f}", f"{statistics.median(self.overheads) * 1e6:.0f}"]


def section_throughput(cfg: Config, device: torch.device, log) -> str:
    """Samples/s at 20 NFE in float32, and per-step overhead beyond the network calls.

    The rows are measured round-robin (every repetition runs every row once), so that a load
    change on a shared machine does not fall on one row only."""
    p = TabulatedVP.from_alphas_cumprod(ddpm_alphas_cumprod())
    B = cfg.tp_batch
    prob = make_problem(p, B, device, torch.float32)
    x_start = prob.start()
    nfe_target = 20
    benches = []
    for name in ("euler", "heun", "dpmpp_2m", "ddim", "ddpm", "euler_maruyama"):
        steps = nfe_target // 2 if name == "heun" else nfe_target  # heun: 2 NFE per step on this process
        grid = karras_grid(p, steps)

        def run(net, name=name, grid=grid):
            noise = ExampleNoise(torch.arange(B), counter=1)
            return OURS[name](net, prob.state(x_start), grid, noise=noise)

        benches.append(Timed("ours", name, steps, run, prob.denoiser))
    if diffusers is not None:
        spec = DIFFUSERS_SPECS[-2]
        scheduler = spec.make()

        def run_d(net):
            return run_diffusers(spec, nfe_target, prob, x_start, 1.0, net, scheduler)

        benches.append(Timed("diffusers", "DPMSolverMultistep (++, order 2), default", nfe_target, run_d,
                             EpsModel(prob)))
    for b in benches:  # warm-up, and the NFE counted on the denoiser
        prob.denoiser.calls = 0
        b.run(b.net)
        b.nfe = prob.denoiser.calls
    for _ in range(cfg.tp_reps):
        for b in benches:
            b.measure(device)
    log("throughput done")
    rows = [b.row(B) for b in benches]
    if diffusers is None:
        rows.append(["diffusers", "not installed: row skipped"] + ["-"] * 6)

    note = (
        f"Batch {B}, float32 states, DDPM linear schedule (TabulatedVP for ours, our Karras grid; diffusers' own "
        f"timesteps), the exact denoiser as the network; medians over {cfg.tp_reps} repetitions after a warm-up. "
        "ms / run and samples / s come from plain runs; network ms / run and overhead per step from runs in which "
        "every network call is timed: overhead = (run time - time inside the network calls of that run) / steps. The network of "
        "the diffusers row is the eps adapter (exact x0 -> eps), so that conversion counts as network time, "
        "not overhead. The stochastic samplers (ddpm, euler_maruyama) draw their noise from ExampleNoise (counted "
        "as overhead). Rows are measured round-robin."
    )
    header = ["library", "sampler", "steps", "network calls", "ms / run", "samples / s", "network ms / run", "overhead us / step"]
    return "### C. Throughput\n\n" + note + "\n\n" + table(header, rows)


# ----------------------------------------------------------------------------- report




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch and reference (under ~40 s on CPU)")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these small batches gain little from more, and timings on "
                             "a shared machine stay stable); 0 keeps torch's default")
    args_list = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(args_list)
    cfg = QUICK if args.quick else FULL
    device = pick_device()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if diffusers is None:
        print("note: diffusers is not installed (pip install diffusers); its rows are skipped.", file=sys.stderr)
    parts = [section_ours_ve(cfg, device, log)]
    md_b, failures = section_vs_diffusers(cfg, device, log)
    parts.append(md_b)
    parts.append(section_throughput(cfg, device, log))
    total = time.perf_counter() - start
    title = "Samplers" + (" (quick)" if args.quick else "")
    header = run_header("samplers.py", args_list, device,
                        [f"- diffusers {diffusers.__version__ if diffusers else 'not installed'}",
                         f"- total runtime: {total:.0f} s"])
    text = "\n\n".join(["\n".join(header)] + parts)
    print(f"## {title}\n\n{text}")
    if failures:
        raise AssertionError("diffusers driving failed its sanity check:\n" + "\n".join(failures))
    if not args.no_append:
        print(f"\nappended to {append_results(title, text)}", file=sys.stderr)


if __name__ == "__main__":
    main()
