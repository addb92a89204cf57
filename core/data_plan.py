"""The data plan: which training examples every micro-batch of every step holds, and their
collation. A pure function of (seed, step, micro-batch).

The examples of step k are positions [k B, (k+1) B) of an endless stream made of permutations of
the training set, one per epoch (epoch = position // N, permutation seeded by (seed, epoch)); rank
r of W takes the r-th of W equal slices of each step, and micro-batch m of ``grad_accum`` the m-th
part of its slice. The global RNGs are reseeded from (seed, step, first position) before every
``collate`` (domain augmentations: torch, NumPy, Python).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .domain import Batch, Domain
from .noise import mix_seed

_M64 = (1 << 64) - 1

# streams of the counter-based seeds of training (arbitrary distinct constants)
PERM, TIME, NOISE, NET, DATA, VAL = 0x5045524D, 0x54494D45, 0x4E4F4953, 0x4E455457, 0x44415441, 0x56414C44


@dataclass
class MicroBatch:
    """One micro-batch of one step on this rank: its stream positions and the collated batch."""

    step: int
    micro: int
    positions: np.ndarray
    batch: Batch


def seed_torch(seed: int, device: torch.device | None = None) -> None:
    """Seed torch's CPU generator (and ``device``'s CUDA generator): cheaper than torch.manual_seed,
    which visits every backend."""
    torch.default_generator.manual_seed(seed & _M64)
    if device is not None and device.type == "cuda":
        torch.cuda.manual_seed(seed & _M64)  # the current device: the trainer's (torch.cuda.set_device)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that a domain's code may use: torch (CPU), NumPy, Python."""
    seed_torch(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


class DataPlan:
    """Which training examples every micro-batch of every step holds, and their collation. A pure
    function of (seed, step, micro-batch); picklable, so DataLoader workers can run it."""

    def __init__(self, domain: Domain, examples: Sequence, data_config: dict, seed: int, batch_size: int,
                 rank: int, world: int, accum: int):
        self.domain, self.examples, self.data_config = domain, examples, data_config
        self.seed, self.B, self.N, self.rank = seed, batch_size, len(examples), rank
        self.B_local = batch_size // world
        bounds = np.linspace(0, self.B_local, accum + 1).round().astype(int)
        # micro-batch m holds positions [a, b) of this rank's slice of the step batch
        self.micro_slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, PERM, epoch))
            p = torch.randperm(self.N, generator=g).numpy()
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = p
        return p

    def positions(self, step: int, micro: int) -> np.ndarray:
        """Positions in the endless example stream of one micro-batch of this rank."""
        a, b = self.micro_slices[micro]
        start = step * self.B + self.rank * self.B_local
        return np.arange(start + a, start + b, dtype=np.int64)

    def indices(self, step: int, micro: int) -> np.ndarray:
        """Indices into the training set of one micro-batch of this rank."""
        pos = self.positions(step, micro)
        first, last = int(pos[0]) // self.N, int(pos[-1]) // self.N
        if first == last:
            return self._perm(first)[pos % self.N]
        return np.array([self._perm(int(p) // self.N)[int(p) % self.N] for p in pos])  # straddles epochs

    def collate(self, step: int, micro: int) -> MicroBatch:
        idx = self.indices(step, micro)
        pos = self.positions(step, micro)
        seed_everything(mix_seed(self.seed, DATA, step, int(pos[0])))
        batch = self.domain.collate([self.examples[i] for i in idx.tolist()], self.data_config)
        return MicroBatch(step, micro, pos, batch)

    def batches(self, start: int, end: int, workers: int) -> Iterator[MicroBatch]:
        """The micro-batches of steps start..end-1 in order, collated here or in ``workers`` processes."""
        if workers == 0:
            for step in range(start, end):
                for micro in range(len(self.micro_slices)):
                    yield self.collate(step, micro)
            return
        yield from torch.utils.data.DataLoader(MicroBatches(self, start, end), batch_size=None, shuffle=False,
                                               num_workers=workers, prefetch_factor=2)


class MicroBatches(torch.utils.data.Dataset):
    def __init__(self, plan: DataPlan, start: int, end: int):
        self.plan, self.start, self.end = plan, start, end

    def __len__(self) -> int:
        return (self.end - self.start) * len(self.plan.micro_slices)

    def __getitem__(self, i: int):
        m = len(self.plan.micro_slices)
        step, micro = self.start + i // m, i % m
        return self.plan.collate(step, micro)


def batch_indices(step: int, *, seed: int, batch_size: int, n_examples: int) -> np.ndarray:
    """The training-set indices of the global batch of step ``step`` (0-based), in order: what
    :func:`train` collates for that step (rank r of W takes the r-th of W equal slices)."""
    if not 0 < batch_size <= n_examples:
        raise ValueError(f"batch_size must lie in [1, {n_examples}], got {batch_size}")
    return DataPlan(None, range(n_examples), {}, seed, batch_size, 0, 1, 1).indices(step, 0)
