"""Per-example randomness: every draw of example i depends only on (seed_i, draw number, field,
position inside the example), never on batch size, batch composition, padding or device.

This is the project's one noise generator: sampling keys it by each example's seed, training by
a hash of (run seed, stream, example position) (:func:`keyed_seeds`).

The generator is counter-based: a 32-bit integer hash (a "lowbias32" mixer) of the key gives two
uniforms per entry and Box-Muller turns them into a standard normal, all vectorised in torch, so a
sampling loop needs no per-example Python loop and no host sync.
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import torch
from torch import Tensor

from .state import State

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def mix_seed(*values: int) -> int:
    """A 64-bit seed that is a hash of the given integers (order matters)."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = _splitmix64(h ^ (int(v) & _M64))
    return h


def keyed_seeds(key: int, positions) -> list[int]:
    """Per-example seeds (non-negative, 63-bit) for ``ExampleNoise``: hashes of (key, position), so
    training noise depends on the run's seed, its stream and the example's position alone."""
    return [mix_seed(key, int(p)) & _M63 for p in positions]


def mix32(x: Tensor) -> Tensor:
    """Bijective avalanche mixer on 32-bit values held in int64 (lowbias32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _uniform_open(h: Tensor) -> Tensor:
    """32-bit hash -> uniform in (0, 1), float64."""
    return (h.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)


def field_stream(name: str) -> int:
    return zlib.crc32(name.encode()) & _M32


def example_coordinates(x: Tensor, index: Tensor | None, batch_size: int) -> tuple[Tensor, list[Tensor]]:
    """For every entry of field ``x``: its example id and its coordinates inside the example.

    Dense fields: coordinates are the positions along dims 1..r-1. Indexed fields: the row's
    position inside its example, then the positions along dims 1..r-1. Shapes broadcast to x.
    """
    shape = x.shape
    dev = x.device
    r = x.dim()

    def along(dim: int) -> Tensor:
        view = [1] * r
        view[dim] = shape[dim]
        return torch.arange(shape[dim], device=dev).view(view).expand(shape)

    trailing = [along(d) for d in range(1, r)]
    if index is None:
        return along(0), trailing
    counts = torch.zeros(batch_size, dtype=torch.long, device=dev).index_add_(0, index, torch.ones_like(index))
    starts = torch.cumsum(counts, 0) - counts  # no host sync (bincount would need one on CUDA)
    row_in_example = torch.arange(shape[0], device=dev) - starts[index]
    view = [shape[0]] + [1] * (r - 1)
    return index.view(view).expand(shape), [row_in_example.view(view).expand(shape)] + trailing


def gaussian_from_keys(seeds: Tensor, example: Tensor, stream: int, counter: int, coords: list[Tensor]) -> Tensor:
    """Standard normal draws (float64) keyed by (seed of the entry's example, stream, counter, coords)."""
    seed = seeds[example]
    h = mix32(torch.full_like(seed, (counter * 0x9E3779B1 + stream) & _M32))
    h = mix32(h ^ (seed & _M32))
    h = mix32(h ^ ((seed >> 32) & _M32))
    for c in coords:
        h = mix32(h ^ (c & _M32))
    u1 = _uniform_open(mix32(h ^ 0x68E31DA4))
    u2 = _uniform_open(mix32(h ^ 0xB5297A4D))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def need_noise(noise: "ExampleNoise | None", what: str) -> "ExampleNoise":
    """``noise``, or a clear error for a stochastic method called without it."""
    if noise is None:
        raise ValueError(f"{what} is stochastic: pass noise=ExampleNoise(seeds)")
    return noise


class ExampleNoise:
    """Standard Gaussian noise for a batch, one independent stream per example seed.

    Each call to :meth:`normal` is one "draw"; the k-th draw of an example is the same whatever
    else is in the batch. Keep one instance per sampling run.
    """

    def __init__(self, seeds: Sequence[int] | Tensor, counter: int = 0, device=None):
        seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(-1)
        if seeds.numel() and int(seeds.min()) < 0:
            raise ValueError("seeds must be non-negative integers")
        self.seeds = seeds if device is None else seeds.to(device)  # checked on the host, kept where drawn
        self.counter = int(counter)

    def __len__(self) -> int:
        return self.seeds.numel()

    def select(self, examples) -> "ExampleNoise":
        return ExampleNoise(self.seeds[torch.as_tensor(examples, dtype=torch.long)], self.counter)

    def normal_field(self, name: str, x: Tensor, index: Tensor | None, batch_size: int, counter: int) -> Tensor:
        seeds = self.seeds.to(x.device)
        example, coords = example_coordinates(x, index, batch_size)
        z = gaussian_from_keys(seeds, example, field_stream(name), counter, coords)
        return z.to(x.dtype)

    def normal(self, like: State) -> State:
        """Standard noise in each field's space (projected, masked), shaped like ``like``."""
        if len(self) != like.batch_size:
            raise ValueError(f"noise has {len(self)} seeds but the batch has {like.batch_size} examples")
        counter = self.counter
        self.counter += 1
        return like.map(
            lambda k, v: like.space(k).noise(
                self.normal_field(k, v, like.index.get(k), like.batch_size, counter), like.layout(k)
            )
        )
