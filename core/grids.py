"""Time grids: schedules are data. Each builder returns a float64 tensor of decreasing times in
[0, 1], from the noisiest time to t = 0 (data); n steps means n + 1 points. Callers may build,
truncate (SDEdit) or override them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .process import Process


def check_grid(grid: Tensor) -> Tensor:
    """A valid grid: 1-D, at least two points, inside [0, 1], strictly decreasing."""
    if not torch.is_tensor(grid):
        grid = torch.as_tensor(grid, dtype=torch.float64)
    grid = grid.detach().to("cpu", torch.float64)
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"a time grid must be a 1-D tensor with at least 2 points, got shape {tuple(grid.shape)}")
    if not bool(torch.isfinite(grid).all()) or float(grid.min()) < 0 or float(grid.max()) > 1:
        raise ValueError("time grid values must lie in [0, 1]")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("time grid must be strictly decreasing (from noise to data)")
    return grid


def uniform(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """Evenly spaced times from t_max down to t_min."""
    _check_steps(steps)
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def log_snr_uniform(process: Process, steps: int, t_max: float = 1.0, t_min: float = 1e-3) -> Tensor:
    """Times evenly spaced in log-SNR between t_max and t_min (DPM-Solver's choice), then t = 0.
    Where the log-SNR is -inf at t_max (alpha(1) = 0: rectified flow) the spacing starts from
    t_max - t_min, and the grid still begins at t_max."""
    _check_steps(steps)
    if steps == 1:
        return torch.tensor([t_max, 0.0], dtype=torch.float64)
    top = t_max
    if not math.isfinite(float(process.log_snr(torch.tensor([t_max], dtype=torch.float64)))):
        top = t_max - t_min
    lam = process.log_snr(torch.tensor([top, t_min], dtype=torch.float64))
    lams = torch.linspace(float(lam[0]), float(lam[1]), steps, dtype=torch.float64)
    times = process.t_of_log_snr(lams).clamp(0, 1)
    times[0], times[-1] = t_max, t_min
    return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


def karras(process: Process, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5: VE-equivalent sigmas rho-spaced from sigma_max to sigma_min,
    mapped to each process's time through its log-SNR, then t = 0. The range is clipped to what
    the process reaches on [0, 1]; when the process's own sigma~(0) lies above sigma_min, the
    rho-spaced sigmas end there, at t = 0 (no zero-length last step). n steps are n intervals."""
    _check_steps(steps)
    ends = process.sigma_tilde(torch.tensor([0.0, 1.0], dtype=torch.float64))
    lo = max(sigma_min, float(ends[0]))
    hi = min(sigma_max, float(ends[1]))
    if not lo < hi:
        raise ValueError(f"karras grid: sigma range [{sigma_min}, {sigma_max}] does not overlap the process's")
    ends_at_data = lo == float(ends[0])  # sigma~(0) > sigma_min: the last sigma is the process's t = 0
    points = steps + 1 if ends_at_data else steps
    if points == 1:
        sig = torch.tensor([hi], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, points, dtype=torch.float64)
        sig = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    times = process.t_of_sigma_tilde(sig).clamp(0, 1)
    if hi == float(ends[1]):
        times[0] = 1.0
    if ends_at_data:
        times[-1] = 0.0
        return times
    return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


def discrete(steps: int, timesteps: int = 1000) -> Tensor:
    """EDM's (Hoogeboom et al.) discrete grid: integer steps s = T .. 0, evenly strided, as t = s/T."""
    _check_steps(steps)
    if steps > timesteps:
        raise ValueError(f"cannot take {steps} steps on a {timesteps}-step discrete grid")
    s = torch.round(torch.linspace(timesteps, 0, steps + 1, dtype=torch.float64))
    return s / timesteps


def truncate(grid: Tensor, t0: float) -> Tensor:
    """The part of a grid at or below t0, starting exactly at t0 (SDEdit's start time)."""
    grid = check_grid(grid)
    rest = grid[grid < t0]
    return torch.cat([torch.tensor([t0], dtype=torch.float64), rest])


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


#: time grid builders by name, each (process, steps, **options) -> grid
GRIDS = {
    "uniform": lambda process, steps, **kw: uniform(steps, **kw),
    "log_snr": log_snr_uniform,
    "karras": karras,
    "discrete": lambda process, steps, **kw: discrete(steps, **kw),
}


def make_grid(kind: str, process: Process, steps: int, **kw) -> Tensor:
    """Build a grid by name (see GRIDS)."""
    try:
        build = GRIDS[kind]
    except KeyError:
        raise ValueError(f"unknown grid '{kind}'; known: {sorted(GRIDS)}") from None
    return build(process, steps, **kw)
