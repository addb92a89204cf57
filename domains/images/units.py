"""The images domain's two value scales: the data's (a file's values: [0, 1] for 8/16-bit images,
the data's own units for raw arrays) and the model's [-1, 1], mapped linearly by the data config's
``range`` [lo, hi] (the training set's minimum and maximum for raw arrays)."""

from __future__ import annotations

import torch

__all__ = ["to_model", "to_data"]


def to_model(values: torch.Tensor, data_config: dict) -> torch.Tensor:
    """Data values to the model's [-1, 1]: 2 (v - lo) / (hi - lo) - 1 with [lo, hi] the data config's range."""
    lo, hi = (float(v) for v in data_config.get("range", [0.0, 1.0]))
    return (values - lo) * (2.0 / (hi - lo)) - 1.0


def to_data(x: torch.Tensor, data_config: dict) -> torch.Tensor:
    """The model's [-1, 1] back to data values (the inverse of ``to_model``)."""
    lo, hi = (float(v) for v in data_config.get("range", [0.0, 1.0]))
    return lo + (x + 1.0) * (0.5 * (hi - lo))
