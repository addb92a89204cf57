"""Spaces: how noise looks for one field.

A space projects a field into itself, turns standard Gaussian draws into noise of the space, and
counts the degrees of freedom per example (what a likelihood integrates over). Masks (padded
entries) are honoured by every space: masked entries are zero and carry no degree of freedom.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """How one field's rows map onto the examples of a batch."""

    batch_size: int
    index: Tensor | None = None  # (rows,) long, sorted, values in [0, batch_size)
    mask: Tensor | None = None  # bool, broadcastable to the field, leading dims equal to the field's

    def per_example(self, values: Tensor, rank: int) -> Tensor:
        """Broadcast per-example scalars ``values`` (B,) to a field of the given rank."""
        if values.dim() != 1 or values.shape[0] != self.batch_size:
            raise ValueError(
                f"per-example values must have shape ({self.batch_size},), got {tuple(values.shape)}"
            )
        rows = values[self.index] if self.index is not None else values
        return rows.reshape(rows.shape[0], *([1] * (rank - 1)))

    def sum_per_example(self, x: Tensor) -> Tensor:
        """Sum every entry of a field-shaped tensor into its example: returns (B,)."""
        flat = x.reshape(x.shape[0], -1).sum(dim=1) if x.dim() > 1 else x
        if self.index is None:
            return flat
        out = torch.zeros(self.batch_size, dtype=flat.dtype, device=flat.device)
        return out.index_add(0, self.index, flat)

    def counts(self, like: Tensor) -> Tensor:
        """Number of real entries per example for a field shaped like ``like``: returns (B,)."""
        ones = torch.ones_like(like, dtype=torch.float64)
        if self.mask is not None:
            ones = ones * expand_mask(self.mask, like).to(torch.float64)
        return self.sum_per_example(ones)


def expand_mask(mask: Tensor, x: Tensor) -> Tensor:
    """A mask with trailing singleton dims so that it broadcasts against field ``x``."""
    return mask.reshape(*mask.shape, *([1] * (x.dim() - mask.dim())))


def _mask_like(layout: Layout, x: Tensor) -> Tensor | None:
    return None if layout.mask is None else expand_mask(layout.mask, x)


class Space:
    """Base class: the whole ambient space of the field (Euclidean)."""

    name = "space"

    def project(self, x: Tensor, layout: Layout) -> Tensor:
        raise NotImplementedError

    def noise(self, z: Tensor, layout: Layout) -> Tensor:
        """Standard Gaussian draws ``z`` (field-shaped) turned into standard noise of this space."""
        return self.project(z, layout)

    def dof(self, x: Tensor, layout: Layout) -> Tensor:
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

    def project(self, x: Tensor, layout: Layout) -> Tensor:
        m = _mask_like(layout, x)
        return x if m is None else x * m.to(x.dtype)

    def dof(self, x: Tensor, layout: Layout) -> Tensor:
        return layout.counts(x)


class ZeroMean(Space):
    """Point sets with zero centre of mass per example (EDM's translation-invariant positions).

    Indexed fields have shape (rows, d...) with the batch vector in the layout; dense fields have
    shape (B, N, d...) with the set along dim 1 and an optional (B, N) mask of real points.
    Degrees of freedom per example: (N - 1) * d.
    """

    name = "zero_mean"

    def centre(self, x: Tensor, layout: Layout) -> Tensor:
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

    def project(self, x: Tensor, layout: Layout) -> Tensor:
        out = x - self.centre(x, layout)
        m = _mask_like(layout, x)
        return out if m is None else out * m.to(x.dtype)

    def dof(self, x: Tensor, layout: Layout) -> Tensor:
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
