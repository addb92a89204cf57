"""Spaces: how noise looks for one field.

A space projects a field into itself, turns standard Gaussian draws into noise of the space, and
counts the degrees of freedom per example (what a likelihood integrates over). Masks (padded
entries) are honoured by every space: masked entries are zero and carry no degree of freedom.

Continuous spaces (``Euclidean``, ``ZeroMean``) are diffused along the process's Gaussian path,
x_t = alpha x0 + sigma eps. A ``Categorical`` field is diffused by masking and sampled by jumps
(see the class); samplers, objectives and the denoiser ask ``space.categorical``.
"""

from __future__ import annotations

import math
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
    categorical = False

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


def _uniform(z: Tensor) -> Tensor:
    """Standard normal draws to uniforms on (0, 1): Phi(z), exactly uniform for normal z."""
    return (0.5 * torch.erfc(-z.to(torch.float64) / math.sqrt(2.0))).clamp(1e-12, 1 - 1e-12)


class Categorical(Space):
    """A categorical field: one-hot rows over ``classes`` values plus a last "mask" class, diffused
    by masking (the absorbing process of Austin et al. 2021; its continuous-time discrete flow:
    Campbell et al. 2024, Gat et al. 2024; Sahoo et al. 2024):

        x_t = mask with probability m(t) = t^p, else x0        (t = 0 data, t = 1 all masked)

    (p = ``power``, 1 by default: the linear schedule; p > 1 unmasks earlier in sampling, so the
    continuous fields see the classes for longer before the end.)

    The network's output F for the field holds logits over the classes; the x0 estimate (what
    samplers see) is the posterior mean of the one-hot x0: for a masked row softmax(F) over the
    real classes, for an unmasked row the row itself ("carry-over": it is x0). A sampler step from
    t to t_next < t unmasks each masked row with probability 1 - m(t_next)/m(t) and gives it a class
    drawn from the x0 estimate (the exact reverse of masking for each row; rows unmasked in the
    same step are drawn independently, so correlations between rows are exact as steps shrink);
    unmasked rows stay. The training loss of
    the field is the cross-entropy of F at the masked rows (the continuous-time ELBO's summand,
    unweighted). The field's noise is standard normal like every field's: the space turns entries
    into uniforms by the normal CDF (column K decides masking, columns 0..K-1 feed the Gumbel draw).
    """

    name = "categorical"
    categorical = True

    def __init__(self, classes: int, power: float = 1.0):
        if int(classes) < 2:
            raise ValueError(f"a categorical field needs at least 2 classes, got {classes}")
        if not power > 0:
            raise ValueError(f"the masking schedule's power must be > 0, got {power}")
        self.classes, self.power = int(classes), float(power)

    def __eq__(self, other) -> bool:
        return isinstance(other, Categorical) and (other.classes, other.power) == (self.classes, self.power)

    def __hash__(self) -> int:
        return hash((self.name, self.classes, self.power))

    def __repr__(self) -> str:
        return f"Categorical({self.classes}, power={self.power:g})"

    def masked_fraction(self, t):
        """m(t) = t^p."""
        return t**self.power

    def project(self, x: Tensor, layout: Layout) -> Tensor:
        m = _mask_like(layout, x)
        return x if m is None else x * m.to(x.dtype)

    def noise(self, z: Tensor, layout: Layout) -> Tensor:
        return z

    def dof(self, x: Tensor, layout: Layout) -> Tensor:
        return torch.zeros(layout.batch_size, dtype=torch.float64, device=x.device)

    def check(self, x: Tensor) -> None:
        if x.shape[-1] != self.classes + 1:
            raise ValueError(f"a Categorical({self.classes}) field has {self.classes + 1} columns (the classes and "
                             f"the mask), got shape {tuple(x.shape)}")

    def mask_token(self, like: Tensor) -> Tensor:
        """Every row the mask class (the prior at t = 1)."""
        out = torch.zeros_like(like)
        out[..., self.classes] = 1
        return out

    def is_masked(self, x: Tensor) -> Tensor:
        """(rows...) bool: the row holds the mask class."""
        return x[..., self.classes] > 0.5

    def diffuse(self, x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """x_t: each row masked with probability m(t) (``t`` broadcast to the field's rank)."""
        masked = _uniform(z[..., self.classes]) < self.masked_fraction(t[..., 0].to(torch.float64))
        return torch.where(masked.unsqueeze(-1), self.mask_token(x0), x0)

    def posterior_mean(self, x_t: Tensor, logits: Tensor) -> Tensor:
        """E[x0 | x_t]: softmax over the real classes at masked rows, the row itself elsewhere."""
        p = torch.softmax(logits[..., :self.classes].to(torch.float64), dim=-1).to(x_t.dtype)
        p = torch.cat([p, torch.zeros_like(p[..., :1])], dim=-1)
        return torch.where(self.is_masked(x_t).unsqueeze(-1), p, x_t)

    def jump(self, x_t: Tensor, D: Tensor, t: float, t_next: float, z: Tensor) -> Tensor:
        """One step t -> t_next of the reverse process: a masked row is unmasked with probability
        1 - m(t_next)/m(t), to a class drawn from D (Gumbel-max on uniforms from ``z``)."""
        if t <= 0:
            return x_t
        masked = self.is_masked(x_t)
        unmask = masked & (_uniform(z[..., self.classes]) < 1.0 - self.masked_fraction(t_next) / self.masked_fraction(t))
        p = D[..., :self.classes].to(torch.float64).clamp_min(0)  # guidance may push entries below 0
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        gumbel = -torch.log(-torch.log(_uniform(z[..., :self.classes])))
        pick = torch.argmax(torch.log(p.clamp_min(1e-30)) + gumbel, dim=-1)
        onehot = torch.nn.functional.one_hot(pick, self.classes + 1).to(x_t.dtype)
        return torch.where(unmask.unsqueeze(-1), onehot, x_t)

    def cross_entropy(self, logits: Tensor, x0: Tensor, x_t: Tensor) -> Tensor:
        """Per-row cross-entropy of the logits against x0's class, at masked rows (0 elsewhere)."""
        logp = torch.log_softmax(logits[..., :self.classes].to(torch.float64), dim=-1)
        ce = -(logp * x0[..., :self.classes].to(torch.float64)).sum(-1)
        return torch.where(self.is_masked(x_t), ce, torch.zeros_like(ce))


SPACES = {"euclidean": Euclidean, "zero_mean": ZeroMean}


def space_from_name(name: str) -> Space:
    try:
        return SPACES[name]()
    except KeyError:
        raise ValueError(f"unknown space '{name}'; known: {sorted(SPACES)}") from None
