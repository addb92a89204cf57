"""Spaces: how noise looks for one field.

A space projects a field into itself, turns standard Gaussian draws into noise of the space, and
counts the degrees of freedom per example (what a likelihood integrates over). Masks (padded
entries) are honoured by every space: masked entries are zero and carry no degree of freedom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .state import Layout


def _mask_like(layout: "Layout", x: Tensor) -> Tensor | None:
    if layout.mask is None:
        return None
    m = layout.mask
    return m.reshape(*m.shape, *([1] * (x.dim() - m.dim())))


class Space:
    """Base class: the whole ambient space of the field (Euclidean)."""

    name = "space"

    def project(self, x: Tensor, layout: "Layout") -> Tensor:
        raise NotImplementedError

    def noise(self, z: Tensor, layout: "Layout") -> Tensor:
        """Standard Gaussian draws ``z`` (field-shaped) turned into standard noise of this space."""
        return self.project(z, layout)

    def dof(self, x: Tensor, layout: "Layout") -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class Euclidean(Space):
    """R^n: every (unmasked) entry is a free coordinate."""

    name = "euclidean"

    def project(self, x: Tensor, layout: "Layout") -> Tensor:
        m = _mask_like(layout, x)
        return x if m is None else x * m.to(x.dtype)

    def dof(self, x: Tensor, layout: "Layout") -> Tensor:
        return layout.counts(x)


class ZeroMean(Space):
    """Point sets with zero centre of mass per example (EDM's translation-invariant positions).

    Indexed fields have shape (rows, d...) with the batch vector in the layout; dense fields have
    shape (B, N, d...) with the set along dim 1 and an optional (B, N) mask of real points.
    Degrees of freedom per example: (N - 1) * d.
    """

    name = "zero_mean"

    def centre(self, x: Tensor, layout: "Layout") -> Tensor:
        """Centre of mass per example, shaped to broadcast against ``x``."""
        m = _mask_like(layout, x)
        w = torch.ones_like(x) if m is None else m.to(x.dtype).expand_as(x)
        if layout.index is not None:
            if x.dim() < 2:
                raise ValueError("a ZeroMean indexed field needs shape (rows, d, ...)")
            B = layout.batch_size
            sums = torch.zeros((B,) + x.shape[1:], dtype=x.dtype, device=x.device).index_add(0, layout.index, x * w)
            cnt = torch.zeros((B,) + x.shape[1:], dtype=x.dtype, device=x.device).index_add(0, layout.index, w)
            return (sums / cnt.clamp_min(1))[layout.index]
        if x.dim() < 3:
            raise ValueError("a ZeroMean dense field needs shape (B, N, d, ...)")
        sums = (x * w).sum(dim=1, keepdim=True)
        cnt = w.sum(dim=1, keepdim=True).clamp_min(1)
        return sums / cnt

    def project(self, x: Tensor, layout: "Layout") -> Tensor:
        out = x - self.centre(x, layout)
        m = _mask_like(layout, x)
        return out if m is None else out * m.to(x.dtype)

    def dof(self, x: Tensor, layout: "Layout") -> Tensor:
        entries = layout.counts(x)  # N_i * d
        if layout.index is not None:
            per_point = float(torch.tensor(x.shape[1:]).prod()) if x.dim() > 1 else 1.0
        else:
            per_point = float(torch.tensor(x.shape[2:]).prod()) if x.dim() > 2 else 1.0
        return entries - per_point  # (N_i - 1) * d


SPACES = {"euclidean": Euclidean, "zero_mean": ZeroMean}


def space_from_name(name: str) -> Space:
    try:
        return SPACES[name]()
    except KeyError:
        raise ValueError(f"unknown space '{name}'; known: {sorted(SPACES)}") from None
