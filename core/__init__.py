"""The domain-agnostic diffusion engine: states, spaces, processes, parameterisations, objectives,
samplers, guidance, likelihoods, the one sampling path, training and batch generation. It never
imports a domain."""

from .grids import GRIDS, check_grid, discrete, karras, log_snr_uniform, make_grid, truncate, uniform
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, Inpaint, sdedit_start
from .likelihood import bits_per_dim, log_likelihood
from .noise import ExampleNoise
from .objectives import DiffusionObjective, diffuse, drop_condition, sample_time
from .parameterisation import (PARAMETERISATIONS, Denoiser, EDMPreconditioning, EpsPrediction, Parameterisation,
                               VelocityPrediction, VPrediction, X0Prediction)
from .process import (PROCESSES, KarrasVE, LinearBetaVP, PolynomialVP, Process, RectifiedFlow, TabulatedVP, VPCosine,
                      VPLinear, process_from_config)
from .samplers import (SAMPLERS, get_sampler, prior, sample_ddim, sample_ddpm, sample_dopri5, sample_dpmpp_2m,
                       sample_euler, sample_euler_maruyama, sample_heun, sample_repaint)
from .sampling import SampleSpec, generate_batch, sample_batch
from .spaces import Euclidean, Layout, Space, ZeroMean
from .state import State

__all__ = [
    "State", "Layout", "Space", "Euclidean", "ZeroMean", "ExampleNoise",
    "Process", "VPCosine", "VPLinear", "TabulatedVP", "PolynomialVP", "LinearBetaVP", "KarrasVE", "RectifiedFlow",
    "PROCESSES", "process_from_config",
    "Denoiser", "Parameterisation", "EpsPrediction", "X0Prediction", "VPrediction", "VelocityPrediction",
    "EDMPreconditioning", "PARAMETERISATIONS",
    "DiffusionObjective", "diffuse", "drop_condition", "sample_time",
    "uniform", "log_snr_uniform", "karras", "discrete", "truncate", "make_grid", "check_grid", "GRIDS",
    "prior", "sample_ddpm", "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_heun",
    "sample_euler_maruyama", "sample_dopri5", "sample_repaint", "SAMPLERS", "get_sampler",
    "SampleSpec", "sample_batch", "generate_batch",
    "ClassifierFreeGuidance", "ClassifierGuidance", "Inpaint", "sdedit_start",
    "log_likelihood", "bits_per_dim",
]
