"""State: a batch of examples as named tensor fields, with the layout that says which rows belong
to which example.

A field is either *dense* (its leading dimension is the example dimension, e.g. ``mel`` of shape
``(B, n_mels, frames)``) or *indexed* (its rows are the nodes of variable-size sets or graphs,
stacked, with a PyG-style ``batch`` vector saying which example each row belongs to, e.g.
``pos`` of shape ``(num_atoms, 3)``). Optional boolean masks mark the real entries of padded
fields (``True`` = real). Every operation here works for any field rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from .spaces import Euclidean, Layout, Space, expand_mask


@dataclass(frozen=True)
class State:
    """A batch: named tensor fields, their spaces, and for each field its layout (index, mask).

    ``index[name]`` is the batch vector of an indexed field; fields without one are dense.
    ``masks[name]`` marks real entries (True) of a padded field. ``spaces[name]`` is the noise
    space of the field (Euclidean when not given).
    """

    fields: Mapping[str, Tensor]
    batch_size: int
    index: Mapping[str, Tensor] = field(default_factory=dict)
    masks: Mapping[str, Tensor] = field(default_factory=dict)
    spaces: Mapping[str, Space] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "fields", dict(self.fields))
        object.__setattr__(self, "index", dict(self.index))
        object.__setattr__(self, "masks", dict(self.masks))
        object.__setattr__(self, "spaces", dict(self.spaces))
        self.check_layout()

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def dense(cls, batch_size: int | None = None, spaces=None, masks=None, **fields: Tensor) -> "State":
        """A state whose fields all have the example dimension first."""
        if batch_size is None:
            if not fields:
                raise ValueError("a state needs at least one field")
            batch_size = next(iter(fields.values())).shape[0]
        return cls(fields, batch_size, spaces=spaces or {}, masks=masks or {})

    def with_prefixed(self, other: "State", prefix: str) -> "State":
        """This state plus ``other``'s fields under ``prefix + name`` (same batch; their layouts and
        spaces come along)."""
        if other.batch_size != self.batch_size:
            raise ValueError(f"cannot merge a state of {other.batch_size} examples into one of {self.batch_size}")
        p = {prefix + k: v for k, v in other.fields.items()}
        return State({**self.fields, **p}, self.batch_size,
                     {**self.index, **{prefix + k: v for k, v in other.index.items()}},
                     {**self.masks, **{prefix + k: v for k, v in other.masks.items()}},
                     {**self.spaces, **{prefix + k: v for k, v in other.spaces.items()}})

    def categorical(self) -> list[str]:
        """The names of the categorical fields."""
        return [k for k in self.fields if self.space(k).categorical]

    def like(self, fields: Mapping[str, Tensor]) -> "State":
        """A new state with the same layout and spaces and the given field tensors (the layout of
        fields it leaves out is dropped)."""
        index = self.index if all(k in fields for k in self.index) else {k: v for k, v in self.index.items() if k in fields}
        masks = self.masks if all(k in fields for k in self.masks) else {k: v for k, v in self.masks.items() if k in fields}
        return State(fields, self.batch_size, index, masks, self.spaces)

    # ---------------------------------------------------------------- access
    @property
    def names(self) -> list[str]:
        return sorted(self.fields)

    def __getitem__(self, name: str) -> Tensor:
        return self.fields[name]

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def layout(self, name: str) -> Layout:
        return Layout(self.batch_size, self.index.get(name), self.masks.get(name))

    def space(self, name: str) -> Space:
        return self.spaces.get(name, Euclidean())

    @property
    def device(self) -> torch.device:
        return next(iter(self.fields.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.fields.values())).dtype

    # ---------------------------------------------------------------- arithmetic, field by field
    def map(self, fn: Callable[[str, Tensor], Tensor]) -> "State":
        return self.like({k: fn(k, v) for k, v in self.fields.items()})

    def zip(self, other: "State", fn: Callable[[Tensor, Tensor], Tensor]) -> "State":
        self.check_same_fields(other)
        return self.like({k: fn(v, other.fields[k]) for k, v in self.fields.items()})

    def expand(self, values: Tensor, name: str) -> Tensor:
        """Per-example scalars (B,) broadcast to the rank of field ``name``."""
        x = self.fields[name]
        return self.layout(name).per_example(values.to(device=x.device), x.dim())

    def scale(self, values: Tensor) -> "State":
        """Multiply each example by its scalar ``values[i]``."""
        return self.map(lambda k, v: v * self.expand(values, k).to(v.dtype))

    def __add__(self, other):
        if isinstance(other, State):
            return self.zip(other, torch.add)
        return self.map(lambda k, v: v + other)

    def __sub__(self, other):
        if isinstance(other, State):
            return self.zip(other, torch.sub)
        return self.map(lambda k, v: v - other)

    def __mul__(self, other):
        if isinstance(other, State):
            return self.zip(other, torch.mul)
        return self.map(lambda k, v: v * other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, State):
            return self.zip(other, torch.div)
        return self.map(lambda k, v: v / other)

    def __neg__(self):
        return self.map(lambda k, v: -v)

    def to(self, device=None, dtype=None) -> "State":
        fields = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in self.fields.items()}
        index = {k: v.to(device) for k, v in self.index.items()}
        masks = {k: v.to(device) for k, v in self.masks.items()}
        return State(fields, self.batch_size, index, masks, self.spaces)

    def detach(self) -> "State":
        return self.map(lambda k, v: v.detach())

    # ---------------------------------------------------------------- spaces
    def project(self) -> "State":
        """Project every field into its space (zero centre of mass, masked entries to zero...)."""
        return self.map(lambda k, v: self.space(k).project(v, self.layout(k)))

    def dof(self) -> Tensor:
        """Degrees of freedom per example, summed over fields: (B,) float64."""
        total = torch.zeros(self.batch_size, dtype=torch.float64, device=self.device)
        for k, v in self.fields.items():
            total = total + self.space(k).dof(v, self.layout(k))
        return total

    # ---------------------------------------------------------------- reductions
    def sum_per_example(self, values: "State | None" = None) -> Tensor:
        """Sum of all entries of every field per example, (B,); of ``values`` if given."""
        src = self if values is None else values
        total = None
        for k, v in src.fields.items():
            if k in self.masks:
                v = v * expand_mask(self.masks[k], v)
            s = self.layout(k).sum_per_example(v)
            total = s if total is None else total + s
        return total

    def squared_norm(self) -> Tensor:
        """Per-example squared L2 norm over all fields (masked entries excluded): (B,)."""
        return self.sum_per_example(self.map(lambda k, v: v.pow(2)))

    # ---------------------------------------------------------------- regrouping examples
    def select(self, examples: Iterable[int] | Tensor) -> "State":
        """The sub-batch of the given examples, in the given order."""
        ids = torch.as_tensor(list(examples) if not isinstance(examples, Tensor) else examples, dtype=torch.long)
        parts = [self._one(int(i)) for i in ids]
        return State.concat(parts)

    def _one(self, i: int) -> "State":
        fields, index, masks = {}, {}, {}
        for k, v in self.fields.items():
            if k in self.index:
                rows = (self.index[k] == i).nonzero(as_tuple=True)[0]
                fields[k] = v[rows]
                index[k] = torch.zeros(len(rows), dtype=torch.long, device=v.device)
                if k in self.masks:
                    masks[k] = self.masks[k][rows]
            else:
                fields[k] = v[i : i + 1]
                if k in self.masks:
                    masks[k] = self.masks[k][i : i + 1]
        return State(fields, 1, index, masks, self.spaces)

    @staticmethod
    def concat(states: list["State"]) -> "State":
        """Stack batches one after the other (indices are offset; dense fields must share shapes)."""
        if not states:
            raise ValueError("cannot concatenate an empty list of states")
        first = states[0]
        fields, index, masks = {}, {}, {}
        offsets, off = [], 0
        for s in states:
            first.check_same_fields(s)
            offsets.append(off)
            off += s.batch_size
        for k in first.fields:
            fields[k] = torch.cat([s.fields[k] for s in states])
            if k in first.index:
                index[k] = torch.cat([s.index[k] + o for s, o in zip(states, offsets)])
            if k in first.masks:
                masks[k] = torch.cat([s.masks[k] for s in states])
        return State(fields, off, index, masks, first.spaces)

    # ---------------------------------------------------------------- validation
    def check_same_fields(self, other: "State") -> None:
        if set(self.fields) != set(other.fields):
            raise ValueError(f"states have different fields: {sorted(self.fields)} vs {sorted(other.fields)}")

    def check_layout(self) -> None:
        """Shapes and indices agree (cheap: no device sync)."""
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative int, got {self.batch_size!r}")
        for k, v in self.fields.items():
            if not isinstance(v, Tensor):
                raise ValueError(f"field '{k}' must be a torch.Tensor, got {type(v).__name__}")
            if v.dim() == 0:
                raise ValueError(f"field '{k}' must have at least one dimension (examples or rows)")
            if k in self.index:
                idx = self.index[k]
                if idx.dtype != torch.long or idx.dim() != 1:
                    raise ValueError(f"index of field '{k}' must be a 1-D long tensor, got {idx.dtype} {tuple(idx.shape)}")
                if idx.shape[0] != v.shape[0]:
                    raise ValueError(
                        f"index of field '{k}' has {idx.shape[0]} entries but the field has {v.shape[0]} rows"
                    )
            elif v.shape[0] != self.batch_size:
                raise ValueError(
                    f"dense field '{k}' has leading dimension {v.shape[0]} but the batch has {self.batch_size} examples"
                )
            if k in self.masks:
                m = self.masks[k]
                if m.dtype != torch.bool:
                    raise ValueError(f"mask of field '{k}' must be bool, got {m.dtype}")
                if m.dim() > v.dim() or not _broadcastable(m, v):
                    raise ValueError(f"mask of field '{k}' has shape {tuple(m.shape)}, not broadcastable to {tuple(v.shape)}")
        for k in self.index:
            if k not in self.fields:
                raise ValueError(f"index given for unknown field '{k}'")
        for k in self.masks:
            if k not in self.fields:
                raise ValueError(f"mask given for unknown field '{k}'")

    def validate(self) -> "State":
        """Full check, values included (one device sync): finite floats, sorted in-range indices."""
        for k, v in self.fields.items():
            if not v.is_floating_point():
                raise ValueError(f"field '{k}' must be a floating-point tensor, got {v.dtype}")
            if not bool(torch.isfinite(v).all()):
                bad = "NaN" if bool(torch.isnan(v).any()) else "inf"
                raise ValueError(f"field '{k}' contains {bad} values")
        for k, idx in self.index.items():
            if idx.numel():
                if int(idx.min()) < 0 or int(idx.max()) >= self.batch_size:
                    raise ValueError(f"index of field '{k}' has values outside [0, {self.batch_size})")
                if bool((idx[1:] < idx[:-1]).any()):
                    raise ValueError(f"index of field '{k}' must be sorted (rows of one example contiguous)")
        return self


def _broadcastable(mask: Tensor, x: Tensor) -> bool:
    """A mask fits a field if its leading dims equal the field's and the rest are 1 or equal."""
    if mask.shape[0] != x.shape[0]:
        return False
    try:
        torch.broadcast_shapes(tuple(mask.shape) + (1,) * (x.dim() - mask.dim()), tuple(x.shape))
    except RuntimeError:
        return False
    return True
