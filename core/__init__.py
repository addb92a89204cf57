"""The domain-agnostic diffusion engine: states, spaces, processes, parameterisations, objectives,
samplers, guidance, likelihoods. It never imports a domain."""

from .grids import check_grid, discrete, karras, log_snr_uniform, make_grid, truncate, uniform
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, Inpaint, sample_repaint, sdedit_start
from .likelihood import bits_per_dim, log_likelihood
from .noise import ExampleNoise
from .objectives import DiffusionObjective, diffuse, drop_condition, sample_time
from .parameterisation import Denoiser, EDMPreconditioning
from .process import (PROCESSES, KarrasVE, PolynomialVP, Process, RectifiedFlow, TabulatedVP, VPCosine,
                      VPLinear, process_from_config)
from .samplers import (SAMPLERS, get_sampler, prior, sample_ddim, sample_ddpm, sample_dopri5, sample_dpmpp_2m,
                       sample_euler, sample_euler_maruyama, sample_heun)
from .spaces import Euclidean, Space, ZeroMean
from .state import Layout, State

SAMPLERS["repaint"] = sample_repaint

__all__ = [
    "State", "Layout", "Space", "Euclidean", "ZeroMean", "ExampleNoise",
    "Process", "VPCosine", "VPLinear", "TabulatedVP", "PolynomialVP", "KarrasVE", "RectifiedFlow",
    "PROCESSES", "process_from_config",
    "Denoiser", "EDMPreconditioning", "DiffusionObjective", "diffuse", "drop_condition", "sample_time",
    "uniform", "log_snr_uniform", "karras", "discrete", "truncate", "make_grid", "check_grid",
    "prior", "sample_ddpm", "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_heun",
    "sample_euler_maruyama", "sample_dopri5", "sample_repaint", "SAMPLERS", "get_sampler",
    "ClassifierFreeGuidance", "ClassifierGuidance", "Inpaint", "sdedit_start",
    "log_likelihood", "bits_per_dim",
]
