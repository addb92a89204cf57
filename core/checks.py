"""Checks a domain author runs in their tests: the engine's promises that depend on their code.

    from sciffusion.core.checks import check_seed_independence
    check_seed_independence(domain, denoiser, cfg, data_config, seeds=[0, 1, 2])

"A sample depends on its seed alone" holds only if the domain's template draws each example's
shape from its own seed and the network never mixes examples: a network that pools over a whole
padded (dense + mask) field, or over the batch, makes samples change with their batch mates.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch

from .sampling import SampleSpec, generate_batch, guidance_null
from .spaces import expand_mask
from .state import State


def seed_independence(domain, denoiser, cfg: Mapping, data_config: dict, seeds: Sequence[int],
                      others: Sequence[int] = (1001, 1002, 1003)) -> float:
    """The largest difference between each seed's sample made alone and the same seed's sample
    made in one batch with ``others`` (float64 sampling, so kernels' round-off cannot hide or fake
    a difference)."""
    sample = dict(cfg["sample"], dtype="float64")
    spec = SampleSpec.from_config(sample, denoiser.process)
    den = copy.deepcopy(denoiser).to(torch.float64).eval()
    run_cfg = dict(cfg, sample=sample)
    null = guidance_null(domain, run_cfg, data_config, spec)
    mixed = list(others) + list(seeds)
    with torch.no_grad():
        together = generate_batch(domain, den, mixed, run_cfg, data_config, spec, null=null).x0
        worst = 0.0
        for i, s in enumerate(seeds):
            alone = generate_batch(domain, den, [s], run_cfg, data_config, spec, null=null).x0
            inside = together.select([len(others) + i])
            for k in alone.fields:
                a, b = _real_entries(alone, k), _real_entries(inside, k)
                if a.shape != b.shape:
                    return float("inf")
                worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
    return worst


def _real_entries(x: State, k: str) -> torch.Tensor:
    """The entries of field ``k`` that are not padding, in order (a padded field's length may
    differ between batches)."""
    v = x[k]
    if k not in x.masks:
        return v.reshape(-1)
    return v[expand_mask(x.masks[k], v).expand_as(v)]


def check_seed_independence(domain, denoiser, cfg: Mapping, data_config: dict, seeds: Sequence[int] = (0, 1, 2),
                            tol: float = 1e-9) -> None:
    """Raise AssertionError when a sample changes with its batch mates (see :func:`seed_independence`)."""
    worst = seed_independence(domain, denoiser, cfg, data_config, seeds)
    if not worst <= tol:
        raise AssertionError(f"domain '{domain.name}': a sample changes with the other examples of its batch "
                             f"(by up to {worst:.3g}): the network mixes examples or reads padded entries, or the "
                             "template's sizes do not come from each seed alone")
