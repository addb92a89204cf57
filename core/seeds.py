"""Seed lists and shards of batch generation: which seeds a run makes and how they are grouped.

Shard boundaries depend only on the seed list and the shard size, never on the batch size or the
number of processes."""

from __future__ import annotations

import operator
import re
from typing import Any, Sequence

from .io import InputError

__all__ = ["parse_seeds", "shard_seeds", "labels_for_seeds"]


def _as_seed(v: Any, what: str) -> int:
    if isinstance(v, (bool, float)) or not hasattr(v, "__index__"):
        raise InputError(f"seeds must be non-negative integers; got {v!r} in {what}")
    v = operator.index(v)
    if v < 0:
        raise InputError(f"seeds must be non-negative integers; got {v} in {what}")
    if v >= 2**63:
        raise InputError(f"seed {v} is too large (at most 2**63 - 1)")
    return v


def parse_seeds(n: int | None = None, seeds: str | Sequence[int] | None = None) -> list[int]:
    """The seed list: ``n`` -> 0..n-1; ``seeds`` -> "0-9999" (inclusive), "5,7,9", "0-9,20" or a
    list of ints. Exactly one of the two; seeds must be non-negative and distinct."""
    if (n is None) == (seeds is None):
        raise InputError("give exactly one of n (seeds 0..n-1) or seeds ('0-9999', '5,7,9' or a list)")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}")
        return list(range(n))
    out: list[int] = []
    if isinstance(seeds, str):
        text = seeds.strip()
        if not text:
            raise InputError("seeds: empty seed list")
        for item in text.split(","):
            item = item.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if a > b:
                    raise InputError(f"seeds '{seeds}': range '{item}' runs backwards")
                if b >= 2**63:
                    raise InputError(f"seeds '{seeds}': seed {b} is too large (at most 2**63 - 1)")
                out.extend(range(a, b + 1))
            elif re.fullmatch(r"\d+", item):
                out.append(_as_seed(int(item), f"'{seeds}'"))
            else:
                raise InputError(f"seeds '{seeds}': '{item}' is neither a non-negative integer nor a range "
                                 "like 0-9999 (write lists as 5,7,9)")
    else:
        try:
            items = list(seeds)
        except TypeError:
            raise InputError(f"seeds must be a string like '0-9999' or '5,7,9' or a list of integers, got {seeds!r}") from None
        out = [_as_seed(v, "the seed list") for v in items]
        if not out:
            raise InputError("seeds: empty seed list")
    if len(set(out)) != len(out):
        seen, dup = set(), None
        for s in out:
            if s in seen:
                dup = s
                break
            seen.add(s)
        raise InputError(f"seeds: seed {dup} is listed twice (files are named by seed)")
    return out


def shard_seeds(seeds: Sequence[int], shard_size: int) -> list[list[int]]:
    """Consecutive chunks of ``shard_size`` seeds, in the order given."""
    return [list(seeds[i:i + shard_size]) for i in range(0, len(seeds), shard_size)]


def labels_for_seeds(want: Any, names: Sequence[str], counts: Sequence[int] | None, seeds: Sequence[int],
                     where: str) -> list[int]:
    """A class index per seed: ``want`` (an index or a label name; ``sample.label``) for every seed,
    or with -1 each seed's own draw from the training label ``counts`` (so a sample's label depends
    on its seed alone). Errors name ``where`` (the domain)."""
    import numpy as np

    names = list(names)
    if isinstance(want, str) and want not in ("", "-1"):
        if want in names:
            return [names.index(want)] * len(seeds)
        try:
            want = int(want)
        except ValueError:
            raise InputError(f"{where}: sample.label={want!r} is not one of the model's labels {names}") from None
    want = -1 if want in ("", None) else int(want)
    if want >= 0:
        if want >= len(names):
            raise InputError(f"{where}: sample.label={want} is out of range (the model has labels {names})")
        return [want] * len(seeds)
    p = np.asarray(counts or [1] * len(names), dtype=np.float64)
    p = p / p.sum()
    return [int(np.random.default_rng(int(s)).choice(len(p), p=p)) for s in seeds]
