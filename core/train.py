"""The trainer: one domain-agnostic training loop for every domain.

    from sciffusion.core.train import train
    result = train("points2d", resolve_config(domain, "run.toml"), "runs/points", device=None)

What it does (configuration table ``train``: ``ENGINE_DEFAULTS["train"]`` plus :data:`TRAIN_DEFAULTS`,
``adaptive_clip_window``, ``adaptive_clip_start`` and ``ddp_find_unused``):

- AdamW (``lr``, ``betas``, ``weight_decay``; the fused kernel where the device has it), linear
  warm-up over ``warmup_steps`` then ``decay`` = none | cosine | linear down to ``min_lr_ratio * lr``
  at ``steps`` (:func:`lr_at`).
- An EMA of the weights: the n-th update (n = 1, 2, ...) uses decay
  ``d_n = min(ema_decay, n / (n + ema_warmup))`` (constant ``ema_decay`` when ``ema_warmup = 0``;
  ``ema_warmup = 9`` is the classic (1 + k) / (10 + k)), ``ema <- ema + (1 - d_n)(theta - ema)``
  (:func:`ema_decay_at`, :class:`EMA`). Buffers are copied, not averaged.
- Gradient clipping: fixed (``grad_clip > 0``: total-norm clipping) and adaptive
  (``adaptive_clip``: clip at ``1.5 * mean + 2 * std`` of the last ``adaptive_clip_window``
  pre-clip norms of good steps, once ``adaptive_clip_start`` good steps were seen; both apply the
  smaller threshold). The history is trainer state, saved in every checkpoint (:class:`AdaptiveClip`).
- ``grad_accum`` micro-batches per optimizer step (``batch_size`` is the global batch of one
  step); bf16 autocast on CUDA when ``bf16``; ``torch.compile`` of the network when ``compile``.
- Classifier-free guidance training: each example's condition is replaced by
  ``domain.null_condition`` with probability ``objective.condition_dropout``.
- Non-finite loss or gradient (one fused check of all gradients per step): the optimizer step and
  the EMA update are skipped and the step is counted; after ``max_bad_steps`` consecutive bad steps
  (0: never) the run stops with :class:`TrainingDiverged`, whose message names the last good
  checkpoint. No checkpoint is written inside a run of bad steps (except at the last step) nor from
  non-finite weights. On CUDA the skip is decided on the device (AdamW's ``found_inf``, a masked
  EMA update) and the per-step scalars reach the host one step late through a non-blocking copy,
  so the trainer never drains the GPU; on the CPU, where nothing runs ahead, it is decided on the
  host. The gradient norm is computed only when clipping and on logged steps.
- Validation loss every ``val_every`` steps (and at step 0) on the "valid" split, at most
  ``val_batches * batch_size`` examples, with fixed times and noise, for the model and its EMA;
  sample metrics every ``sample_every`` steps: ``sample_n`` examples from the EMA network with the
  ``sample`` table's sampler, grid and guidance, seeds 0..sample_n-1, through ``domain.decode`` and
  ``domain.metrics``. Both also run at the last step when enabled.
- DDP under ``torchrun`` (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA (LOCAL_RANK's GPU); each rank
  takes its contiguous slice of every global batch; only rank 0 writes.

Determinism. Everything random in a step is a pure function of (seed, step, example position):
the examples of step k are positions [k B, (k+1) B) of an endless stream made of permutations of
the training set, one per epoch (epoch = position // N, permutation seeded by (seed, epoch)); the
diffusion times and the condition-dropout draws of the B positions come from a generator seeded
by (seed, k); the noise of each example is counter-based, keyed by (seed, position) (see
:func:`position_noise`); the global RNGs are reseeded from (seed, step, first position) before
every ``collate`` (domain augmentations: torch, NumPy, Python) and torch's from (seed, step,
micro-batch, rank) before every forward (network dropout). So resuming needs only the checkpoint's
step, weights, EMA, optimizer and trainer tensors, and is bitwise exact on the same machine; a
2-process DDP run and ``grad_accum`` reproduce the single-process step up to float summation order.
:func:`batch_indices` tells which examples a step used.

Run folder::

    out/config.json        the resolved config (atomic); a resume must match it except for
                           the keys and tables in RESUME_MAY_CHANGE
    out/log.jsonl          one JSON object per line: training (step, loss: mean over the good steps
                           since the last line, lr, grad_norm: pre-clip norm at this step,
                           examples_per_s, bad_steps, clipped_steps, elapsed), validation
                           ("val_loss", "val_loss_ema"), samples ("sample/<metric>"), events ("event")
    out/checkpoints/step-XXXXXXXX/   see core/checkpoint.py; model.safetensors and ema.safetensors
                           hold ``denoiser.network.state_dict()`` (load with :func:`load_denoiser`)
    out/tensorboard/       scalars, when torch.utils.tensorboard imports
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import math
import os
import random
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import (CheckpointError, check_domain, checkpoints_dir, latest_checkpoint, load_checkpoint,
                         load_weights, save_run_checkpoint)
from .config import deep_merge
from .domain import Batch, Domain, denoiser_from_checkpoint, pick_device
from .grids import make_grid
from .guidance import ClassifierFreeGuidance
from .io import InputError, atomic_write_json, atomic_write_text, remove_stale_temporaries
from .noise import ExampleNoise, field_stream, mix32
from .objectives import drop_condition
from .parameterisation import Denoiser
from .samplers import get_sampler, prior
from .state import State

__all__ = ["train", "TrainResult", "TrainingDiverged", "lr_at", "ema_decay_at", "EMA", "AdaptiveClip",
           "load_denoiser", "batch_indices", "position_noise", "read_log", "TRAIN_DEFAULTS", "RESUME_MAY_CHANGE"]

#: Keys of the ``train`` table that this module reads beyond ``ENGINE_DEFAULTS["train"]``, with
#: their defaults (merged under the domain's and the user's values).
TRAIN_DEFAULTS: dict = {
    "adaptive_clip_window": 50,  # pre-clip norms of the last this-many good steps
    "adaptive_clip_start": 10,  # good steps seen before adaptive clipping engages
    "ddp_find_unused": "auto",  # DDP find_unused_parameters: "auto" probes the first batch once
}

#: Config keys (or whole tables) that may differ between a run folder and the config that resumes
#: it: train.steps, the cadence keys, and the ``sample`` table (how the model is sampled, never how
#: it is trained).
RESUME_MAY_CHANGE = frozenset({
    "train.steps", "train.log_every", "train.val_every", "train.val_batches", "train.sample_every",
    "train.sample_n", "train.ckpt_every", "train.keep_last", "train.num_workers", "train.max_bad_steps",
    "sample",
})

DECAYS = ("none", "cosine", "linear")
_CLIP_MEAN, _CLIP_STD = 1.5, 2.0  # adaptive threshold = 1.5 * mean + 2 * std of recent norms

# streams of the counter-based seeds (arbitrary distinct constants)
_PERM, _TIME, _NOISE, _NET, _DATA, _VAL = 0x5045524D, 0x54494D45, 0x4E4F4953, 0x4E455457, 0x44415441, 0x56414C44


class TrainingDiverged(InputError):
    """Too many consecutive steps with a non-finite loss or gradient (or non-finite weights)."""


@dataclass
class TrainResult:
    checkpoint: Path  # the last checkpoint folder
    step: int
    metrics: dict = field(default_factory=dict)
    run_dir: Path = Path(".")


# ----------------------------------------------------------------------------- small pure pieces

_M64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF


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


def lr_at(step: int, tcfg: Mapping) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1`` completed steps.

    Warm-up: lr (k + 1) / warmup_steps for k < warmup_steps. Then, with p = (k - warmup) /
    (steps - warmup): none 1; linear 1 - (1 - r) p; cosine r + (1 - r)(1 + cos(pi p)) / 2, times lr,
    where r = min_lr_ratio (so lr(steps) = r lr)."""
    lr = float(tcfg["lr"])
    warm = int(tcfg.get("warmup_steps", 0))
    if warm > 0 and step < warm:
        return lr * (step + 1) / warm
    decay = tcfg.get("decay", "none")
    if decay == "none":
        return lr
    r = float(tcfg.get("min_lr_ratio", 0.0))
    span = max(1, int(tcfg["steps"]) - warm)
    p = min(1.0, max(0.0, (step - warm) / span))
    if decay == "linear":
        return lr * (1.0 - (1.0 - r) * p)
    if decay == "cosine":
        return lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p)))
    raise InputError(f"train.decay must be one of {DECAYS}, got {decay!r}")


def ema_decay_at(n: int, decay: float, warmup: float) -> float:
    """Decay of the n-th EMA update (n = 1, 2, ...): min(decay, n / (n + warmup)); ``decay`` when warmup = 0."""
    return decay if warmup <= 0 else min(decay, n / (n + warmup))


class EMA:
    """Exponential moving average of parameters: ema <- ema + (1 - d_n)(theta - ema), skipped on
    bad steps (all on the device: no host sync)."""

    def __init__(self, params: Sequence[Tensor], ema_params: Sequence[Tensor], decay: float, warmup: float,
                 device=None):
        self.decay, self.warmup = float(decay), float(warmup)
        self.updates = torch.zeros((), dtype=torch.float64, device=device)  # good updates so far
        groups: dict[torch.dtype, tuple[list, list]] = {}
        for p, e in zip(params, ema_params):
            g = groups.setdefault(e.dtype, ([], []))
            g[0].append(e)
            g[1].append(p)
        self._groups = groups

    @torch.no_grad()
    def update(self, good: bool | Tensor = True) -> None:
        """One update, a no-op when ``good`` is false: a bool (decided on the host), or a 0-dim bool
        tensor on the device (decided there: no host sync)."""
        if not isinstance(good, Tensor):
            if good:
                self.updates += 1
                w = 1.0 - ema_decay_at(float(self.updates), self.decay, self.warmup)
                for ema, params in self._groups.values():
                    torch._foreach_lerp_(ema, params, w)
            return
        g = good.to(torch.float64)
        n = self.updates + g
        d = n / (n + self.warmup) if self.warmup > 0 else torch.ones_like(n)
        w = (1.0 - d.clamp(max=self.decay)) * g
        for dtype, (ema, params) in self._groups.items():
            torch._foreach_lerp_(ema, params, w.to(dtype))
        self.updates = n


class AdaptiveClip:
    """Threshold = 1.5 mean + 2 std (unbiased) of the pre-clip gradient norms of the last ``window``
    good steps; infinite until ``start`` good steps were seen. Device tensors only."""

    def __init__(self, window: int = 50, start: int = 10, device=None):
        self.window, self.start = int(window), int(start)
        self.history = torch.zeros(self.window, dtype=torch.float64, device=device)
        self.pushed = torch.zeros((), dtype=torch.long, device=device)  # good norms pushed so far
        self._slots = torch.arange(self.window, device=device)

    def threshold(self) -> Tensor:
        n = self.pushed.clamp(max=self.window)
        valid = (self._slots < n).to(torch.float64)
        nf = n.to(torch.float64).clamp(min=1.0)
        mean = (self.history * valid).sum() / nf
        var = (((self.history - mean) * valid) ** 2).sum() / (nf - 1.0).clamp(min=1.0)
        thr = _CLIP_MEAN * mean + _CLIP_STD * var.sqrt()
        return torch.where(self.pushed >= self.start, thr, torch.full_like(thr, math.inf))

    def push(self, norm: Tensor, good: bool | Tensor = True) -> None:
        """Record a pre-clip norm, unless ``good`` (a bool, or a 0-dim bool tensor: no host sync) is false."""
        if not isinstance(good, Tensor) and not good:
            return
        pos = (self.pushed % self.window).view(1)
        norm = norm.detach().to(torch.float64).reshape(1)
        if isinstance(good, Tensor):
            norm = torch.where(good, norm, self.history.index_select(0, pos))
        self.history.index_copy_(0, pos, norm)
        self.pushed += good.to(torch.long) if isinstance(good, Tensor) else 1

    def state(self) -> dict[str, Tensor]:
        return {"clip/history": self.history, "clip/pushed": self.pushed}

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        if tensors["clip/history"].shape != self.history.shape:
            raise InputError(f"adaptive-clip history has {tensors['clip/history'].numel()} entries, "
                             f"the config asks for a window of {self.window}")
        self.history.copy_(tensors["clip/history"])
        self.pushed.copy_(tensors["clip/pushed"])


def batch_indices(step: int, *, seed: int, batch_size: int, n_examples: int) -> np.ndarray:
    """The training-set indices of the global batch of step ``step`` (0-based), in order: what
    :func:`train` collates for that step (rank r of W takes the r-th of W equal slices)."""
    if not 0 < batch_size <= n_examples:
        raise ValueError(f"batch_size must lie in [1, {n_examples}], got {batch_size}")
    return _DataPlan(None, range(n_examples), {}, seed, batch_size, 0, 1, 1).indices(step, 0)


def load_denoiser(path: str | Path, domain: str | Domain | None = None, *, prefer_ema: bool = True,
                  device=None) -> tuple[Denoiser, Any]:
    """Rebuild the denoiser of a checkpoint (or run folder) with its weights: (denoiser, checkpoint)."""
    ckpt = load_checkpoint(path)
    if domain is None:
        domain = ckpt.domain
    domain = _get_domain(domain)
    check_domain(ckpt, domain.name)
    return denoiser_from_checkpoint(domain, ckpt, prefer_ema=prefer_ema, device=device or "cpu"), ckpt


# ----------------------------------------------------------------------------- helpers


def _get_domain(domain: str | Domain) -> Domain:
    if isinstance(domain, Domain):
        return domain
    from .registry import get_domain

    return get_domain(str(domain))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot store {type(o).__name__} in a JSON config")


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out.extend(config_differences(a[k], b[k], key))
        return out
    return [] if a == b else [prefix or "<root>"]


def _dotted(cfg: Mapping, key: str):
    node: Any = cfg
    for p in key.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return "<absent>"
        node = node[p]
    return node


def _check_int(tcfg: Mapping, key: str, lo: int) -> int:
    v = tcfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < lo:
        raise InputError(f"train.{key} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_float(tcfg: Mapping, key: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    v = tcfg.get(key)
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and not math.isnan(v)
    ok = ok and (v > lo if lo_open else v >= lo) and v <= hi and (hi == math.inf or math.isfinite(v))
    if not ok:
        raise InputError(f"train.{key} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
    return float(v)


def check_train_config(cfg: Mapping) -> None:
    """InputError for values of the ``train`` table (and condition dropout) that cannot work."""
    t = cfg.get("train")
    if not isinstance(t, Mapping):
        raise InputError("config has no [train] table")
    _check_int(t, "steps", 0)
    _check_int(t, "batch_size", 1)
    _check_float(t, "lr", 0.0, lo_open=True)
    _check_float(t, "weight_decay", 0.0)
    betas = t.get("betas")
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise InputError(f"train.betas must be two numbers in [0, 1), got {betas!r}")
    for k in ("warmup_steps", "log_every", "val_every", "sample_every", "ckpt_every", "keep_last",
              "max_bad_steps", "num_workers", "seed", "ema_warmup"):
        _check_int(t, k, 0)
    _check_int(t, "val_batches", 1)
    _check_int(t, "sample_n", 1)
    _check_int(t, "grad_accum", 1)
    _check_int(t, "adaptive_clip_window", 2)
    _check_int(t, "adaptive_clip_start", 2)
    if t.get("decay") not in DECAYS:
        raise InputError(f"train.decay must be one of {DECAYS}, got {t.get('decay')!r}")
    _check_float(t, "min_lr_ratio", 0.0, 1.0)
    _check_float(t, "ema_decay", 0.0, 1.0)
    _check_float(t, "grad_clip", 0.0)
    if t.get("ddp_find_unused") not in ("auto", True, False):
        raise InputError(f"train.ddp_find_unused must be \"auto\", true or false, got {t.get('ddp_find_unused')!r}")
    p = cfg.get("objective", {}).get("condition_dropout", 0.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise InputError(f"objective.condition_dropout must be a probability in [0, 1], got {p!r}")


def position_noise(x0: State, positions: np.ndarray | Tensor, key: int) -> State:
    """Standard noise in each field's space, shaped like ``x0``, where the draws of example i depend
    only on (key, positions[i], field, entry inside the example): not on the batch's composition, so
    a DDP slice or an accumulation micro-batch draws exactly what the whole batch would.

    Counter-based like ``ExampleNoise`` (its lowbias32 mixer and Box-Muller), but with the key of an
    example hashed once (splitmix64 of position, key and field, on the host) and two hashes per entry,
    computed with
    NumPy for CPU fields (a few microseconds per operation instead of torch's dispatch) and with
    torch on the field's device otherwise (no host sync). CPU and CUDA draws may differ in the last bit."""
    pos = positions.detach().cpu().numpy() if isinstance(positions, Tensor) else np.asarray(positions)
    pos = pos.astype(np.uint64)
    out = {}
    for name, v in x0.fields.items():  # (uint64 array arithmetic wraps around silently)
        keys = (_splitmix64_np(pos ^ np.uint64(_field_key(key, name))) >> np.uint64(32)).astype(np.int64)
        index = x0.index.get(name)
        rows, per_row = v.shape[0], math.prod(v.shape[1:])
        if v.device.type == "cpu":
            z = _normals(_NP, keys, None if index is None else index.numpy(), rows, per_row)
            z = torch.from_numpy(z.astype(_NUMPY_DTYPES.get(v.dtype, np.float64), copy=False)).to(v.dtype)
        else:
            z = _normals(_TorchOps(v.device), torch.from_numpy(keys).to(v.device), index, rows, per_row).to(v.dtype)
        out[name] = x0.space(name).noise(z.reshape(v.shape), x0.layout(name))
    return x0.like(out)


@functools.lru_cache(maxsize=256)
def _field_key(key: int, name: str) -> int:
    return mix_seed(key, field_stream(name))


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _splitmix64_np(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _normals(ops, keys, index, rows: int, per_row: int):
    """Standard normals (rows, per_row), float64: entry e of example i from hash(keys[i], e)."""
    if index is None:
        example, local = ops.arange(rows), ops.arange(rows) * 0
    else:
        counts = ops.counts(index, keys.shape[0])
        example, local = index, ops.arange(rows) - (ops.cumsum(counts) - counts)[index]
    entry = (local * per_row)[:, None] + ops.arange(per_row)[None, :]
    h = mix32(keys[example][:, None] ^ entry)
    u1 = (ops.f64(h) + 0.5) * 2.0**-32
    u2 = (ops.f64(mix32(h ^ 0x68E31DA4)) + 0.5) * 2.0**-32
    return ops.sqrt(-2.0 * ops.log(u1)) * ops.cos((2.0 * math.pi) * u2)


class _NumpyOps:
    arange = staticmethod(lambda n: np.arange(n, dtype=np.int64))
    counts = staticmethod(lambda index, n: np.bincount(index, minlength=n))
    cumsum = staticmethod(np.cumsum)
    f64 = staticmethod(lambda x: x.astype(np.float64))
    sqrt, log, cos = staticmethod(np.sqrt), staticmethod(np.log), staticmethod(np.cos)


class _TorchOps:
    sqrt, log, cos = staticmethod(torch.sqrt), staticmethod(torch.log), staticmethod(torch.cos)

    def __init__(self, device):
        self.device = device

    def arange(self, n):
        return torch.arange(n, device=self.device)

    def counts(self, index, n):  # index_add, not bincount: no host sync on CUDA
        return torch.zeros(n, dtype=torch.long, device=index.device).index_add_(0, index, torch.ones_like(index))

    def cumsum(self, x):
        return torch.cumsum(x, 0)

    def f64(self, x):
        return x.to(torch.float64)


_NP = _NumpyOps()


def _seed_torch(seed: int, device: torch.device | None = None) -> None:
    """Seed torch's CPU generator (and ``device``'s CUDA generator): cheaper than torch.manual_seed,
    which visits every backend."""
    torch.default_generator.manual_seed(seed & _M64)
    if device is not None and device.type == "cuda":
        torch.cuda.manual_seed(seed & _M64)  # the current device: the trainer's (torch.cuda.set_device)


def _seed_everything(seed: int) -> None:
    """Seed the global RNGs that a domain's code may use: torch (CPU), NumPy, Python."""
    _seed_torch(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def _finite_params(params: Sequence[Tensor]) -> bool:
    if not params:
        return True
    norms = torch._foreach_norm([p.detach() for p in params])
    return bool(torch.isfinite(torch.stack([n.to(torch.float64) for n in norms])).all())


class _Loss(nn.Module):
    """The training loss as a module, so DDP sees the whole denoiser (every parameter) in one forward."""

    def __init__(self, denoiser: nn.Module, objective):
        super().__init__()
        self.denoiser = denoiser
        self.objective = objective

    def forward(self, x0: State, cond, t: Tensor, eps: State) -> Tensor:
        return self.objective(self.denoiser, x0, cond, t=t, eps=eps)


class _Stats:
    """Per-step scalars (loss, gradient norm or NaN, bad, clipped) from the device to the host. On
    CUDA the copy is non-blocking and read one step later (the GPU is never drained by the trainer);
    on the CPU, where reading a scalar costs nothing, the trainer hands over Python values."""

    def __init__(self):
        self.pending: deque = deque()

    def push(self, step: int, values: list) -> None:
        self.pending.append((step, values, None))

    def push_device(self, step: int, values: Tensor) -> None:
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self.pending.append((step, host, ev))

    def pop(self, flush: bool = False) -> Iterator[tuple[int, list]]:
        while self.pending:
            step, values, ev = self.pending[0]
            if ev is not None:
                if not flush and len(self.pending) == 1 and not ev.query():
                    return
                ev.synchronize()
                values = values.tolist()
            self.pending.popleft()
            yield step, values


class _DataPlan:
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
            g = torch.Generator().manual_seed(mix_seed(self.seed, _PERM, epoch))
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

    def collate(self, step: int, micro: int) -> Batch:
        idx = self.indices(step, micro)
        _seed_everything(mix_seed(self.seed, _DATA, step, int(self.positions(step, micro)[0])))
        return self.domain.collate([self.examples[i] for i in idx.tolist()], self.data_config)

    def batches(self, start: int, end: int, workers: int) -> Iterator[tuple[int, int, Batch]]:
        """(step, micro, batch) for steps start..end-1, collated here or in ``workers`` processes."""
        if workers == 0:
            for step in range(start, end):
                for micro in range(len(self.micro_slices)):
                    yield step, micro, self.collate(step, micro)
            return
        yield from torch.utils.data.DataLoader(_MicroBatches(self, start, end), batch_size=None, shuffle=False,
                                               num_workers=workers, prefetch_factor=2)


class _MicroBatches(torch.utils.data.Dataset):
    def __init__(self, plan: _DataPlan, start: int, end: int):
        self.plan, self.start, self.end = plan, start, end

    def __len__(self) -> int:
        return (self.end - self.start) * len(self.plan.micro_slices)

    def __getitem__(self, i: int):
        m = len(self.plan.micro_slices)
        step, micro = self.start + i // m, i % m
        return step, micro, self.plan.collate(step, micro)


# ----------------------------------------------------------------------------- the trainer


class _Trainer:
    def __init__(self, domain: Domain, cfg: dict, out: Path, device: torch.device, world: int, rank: int,
                 progress: bool):
        self.domain, self.cfg, self.out, self.device = domain, cfg, out, device
        self.world, self.rank, self.main = world, rank, rank == 0
        self.show_progress = progress and self.main
        t = cfg["train"]
        self.t = t
        self.seed = int(t["seed"])
        self.B = int(t["batch_size"])
        self.total_steps = int(t["steps"])
        if self.B % world:
            raise InputError(f"train.batch_size={self.B} must be divisible by the number of processes ({world})")
        self.B_local = self.B // world
        accum = int(t["grad_accum"])
        if accum > self.B_local:
            raise InputError(f"train.grad_accum={accum} exceeds the batch of each process ({self.B_local} examples)")
        self.accum = accum
        self.use_bf16 = bool(t["bf16"]) and device.type == "cuda"
        self.log_file = None
        self.tb = None
        self.last_ckpt: Path | None = None
        self.last_ckpt_step = 0
        self.metrics: dict = {}
        self.train_time = 0.0  # seconds in training steps (without evaluation and checkpoints) this session

    # ------------------------------------------------------------------ data
    def load_data(self, data_config: dict | None) -> None:
        data_cfg = self.cfg.get("data", {})
        where = data_cfg.get("path") or data_cfg
        self.train_set = self.domain.load_dataset(data_cfg, "train")
        self.N = len(self.train_set)
        if self.N == 0:
            raise InputError(f"{where}: the training split is empty (no examples to train on)")
        if self.B > self.N:
            raise InputError(f"train.batch_size={self.B} is larger than the training set "
                             f"({self.N} examples from {where})")
        fresh = _jsonable(self.domain.data_config(self.train_set, self.cfg))
        if data_config is not None and fresh != data_config:
            warnings.warn(f"{where}: the training data changed since the checkpoint; continuing with the "
                          "checkpoint's data config (the resumed run is not an exact continuation)")
        self.data_config = fresh if data_config is None else data_config
        self.plan = _DataPlan(self.domain, self.train_set, self.data_config, self.seed, self.B, self.rank,
                              self.world, self.accum)
        self.micro_slices = self.plan.micro_slices
        self.valid_set: Sequence = []
        if int(self.t["val_every"]) > 0 and self.main:
            self.valid_set = self.domain.load_dataset(data_cfg, "valid")
            if len(self.valid_set) == 0:
                raise InputError(f"{where}: train.val_every={self.t['val_every']} but the validation split is empty")

    # ------------------------------------------------------------------ model
    def build(self) -> None:
        cfg, dev = self.cfg, self.device
        torch.manual_seed(self.seed)  # initial weights: a function of the seed alone, equal on all ranks
        _seed_everything(self.seed)
        self.den = self.domain.build_denoiser(cfg, self.data_config).to(dev)
        self.den.train()
        self.ema_den = copy.deepcopy(self.den).eval().requires_grad_(False)
        self.objective = self.domain.build_objective(cfg)
        self.null = self.domain.null_condition(cfg, self.data_config)
        self.p_drop = float(cfg["objective"].get("condition_dropout", 0.0))
        self.params = [p for p in self.den.parameters() if p.requires_grad]
        if not self.params:
            raise InputError(f"domain '{self.domain.name}': the denoiser has no trainable parameters")
        ema_of = dict(self.ema_den.named_parameters())
        names = [n for n, p in self.den.named_parameters() if p.requires_grad]
        t = self.t
        self.ema = EMA(self.params, [ema_of[n] for n in names], float(t["ema_decay"]), float(t["ema_warmup"]), dev)
        self.clip = AdaptiveClip(int(t["adaptive_clip_window"]), int(t["adaptive_clip_start"]), dev) \
            if t["adaptive_clip"] else None
        self.grad_clip = float(t["grad_clip"])
        kw = dict(lr=float(t["lr"]), betas=tuple(float(b) for b in t["betas"]), weight_decay=float(t["weight_decay"]))
        try:
            self.opt = torch.optim.AdamW(self.params, fused=True, **kw)
            self.fused = True
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            self.opt = torch.optim.AdamW(self.params, **kw)
            self.fused = False
        self.found_inf = torch.zeros(1, dtype=torch.float32, device=dev)
        self._one = torch.ones(1, dtype=torch.float32, device=dev)
        # On the CPU nothing runs ahead of the host, so reading a scalar is free: skip decisions are
        # taken on the host there, and on the device (no sync) everywhere else.
        self.host_decides = dev.type == "cpu"
        # counters kept on the host (from the per-step stats)
        self.bad_total = 0
        self.bad_run = 0
        self.bad_first = 0
        self.clipped_total = 0

    def wrap(self, probe: Batch | None) -> None:
        """The forward used for training: compiled and/or DDP-wrapped views of the same parameters."""
        fwd = self.den
        if self.t["compile"]:
            fwd = copy.copy(self.den)
            fwd._modules = dict(self.den._modules)
            fwd.network = torch.compile(self.den.network)
        self.loss_mod = _Loss(fwd, self.objective)
        self.model: nn.Module = self.loss_mod
        self.ddp = False
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = self.t["ddp_find_unused"]
            if unused == "auto":
                unused = self._probe_unused(probe)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.loss_mod, device_ids=ids, find_unused_parameters=bool(unused))
            self.ddp = True

    def _probe_unused(self, batch: Batch) -> bool:
        """Does one backward pass leave some parameter without a gradient (on any rank)?"""
        import torch.distributed as dist

        batch = batch.to(self.device)
        n = batch.x0.batch_size
        t = self.objective.sample_t(n, generator=torch.Generator().manual_seed(0), device=self.device)
        eps = position_noise(batch.x0, np.arange(n), 0)
        with self._autocast():
            self.loss_mod(batch.x0, batch.cond, t, eps).backward()
        flag = torch.tensor([float(any(p.grad is None for p in self.params))], device=self.device)
        self.opt.zero_grad(set_to_none=True)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, Tensor]:
        out = {
            "ema/updates": self.ema.updates,
            "bad/total": torch.tensor(self.bad_total), "bad/run": torch.tensor(self.bad_run),
            "bad/first": torch.tensor(self.bad_first), "clip/clipped": torch.tensor(self.clipped_total),
        }
        if self.clip is not None:
            out.update(self.clip.state())
        return out

    def load(self, ckpt) -> int:
        src = ckpt.path
        load_weights(self.den.network, ckpt.tensors("model.safetensors"), src / "model.safetensors")
        if ckpt.has("ema.safetensors"):
            load_weights(self.ema_den.network, ckpt.tensors("ema.safetensors"), src / "ema.safetensors")
        else:
            self.ema_den.load_state_dict(self.den.state_dict())
        try:
            self.opt.load_state_dict(ckpt.optimizer_state())
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{src}: optimizer state does not fit the model ({e})") from None
        for group in self.opt.param_groups:  # the stored groups came through JSON
            group["betas"] = tuple(group["betas"])
        extra = ckpt.extra_tensors()
        try:
            self.ema.updates.copy_(extra["ema/updates"])
            self.bad_total = int(extra["bad/total"])
            self.bad_run = int(extra["bad/run"])
            self.bad_first = int(extra["bad/first"])
            self.clipped_total = int(extra["clip/clipped"])
            if self.clip is not None:
                self.clip.load({k: v.to(self.device) for k, v in extra.items() if k.startswith("clip/")})
        except KeyError as e:
            raise CheckpointError(f"{src}: trainer state lacks {e} (not a checkpoint written by train()?)") from None
        ckpt.restore_rng()
        self.last_ckpt, self.last_ckpt_step = ckpt.path, ckpt.step
        self.metrics = dict(ckpt.meta.get("metrics", {}))
        return ckpt.step

    # ------------------------------------------------------------------ one step
    def step_draws(self, step: int) -> tuple[Tensor, Tensor | None]:
        """Times and condition-dropout flags of the B positions of a step (CPU)."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, _TIME, step))
        t = self.objective.sample_t(self.B, generator=g)
        drop = torch.rand(self.B, generator=g) < self.p_drop if self.p_drop > 0 and self.null is not None else None
        return t, drop

    def example_noise(self, stream: int, positions: np.ndarray, x0: State) -> State:
        return position_noise(x0, positions, mix_seed(self.seed, stream))

    def _drop(self, cond, drop: Tensor):
        if not isinstance(cond, Mapping):
            raise InputError(f"domain '{self.domain.name}': condition dropout needs the batch condition as a dict "
                             f"of tensors, got {type(cond).__name__}")
        null = drop_condition(cond, 1.0, self.null)  # the null condition, batch-shaped
        out = {}
        for k, v in cond.items():
            d = drop.to(v.device).reshape(-1, *([1] * (v.dim() - 1)))
            out[k] = torch.where(d, null[k], v)
        return out

    def train_step(self, step: int, micro_iter, need_norm: bool = False) -> None:
        """One optimizer step (``grad_accum`` micro-batches); ``need_norm``: compute the gradient norm
        even without clipping (for the log)."""
        t_all, drop_all = self.step_draws(step)
        dev = self.device
        loss_acc = torch.zeros((), dtype=torch.float64, device=dev)
        n_micro = len(self.micro_slices)  # 1 without accumulation: no loss scaling then
        offset = self.rank * self.B_local
        for micro in range(n_micro):
            s, m, batch = next(micro_iter)
            assert s == step and m == micro, (s, m, step, micro)
            a, b = self.micro_slices[micro]
            batch = batch.to(dev)
            x0, cond = batch.x0, batch.cond
            if x0.batch_size != b - a:
                raise InputError(f"domain '{self.domain.name}': collate returned {x0.batch_size} examples for "
                                 f"{b - a} inputs")
            t = t_all[offset + a:offset + b].to(dev)
            if drop_all is not None and cond is not None:
                cond = self._drop(cond, drop_all[offset + a:offset + b])
            eps = self.example_noise(_NOISE, self.plan.positions(step, micro), x0)
            _seed_torch(mix_seed(self.seed, _NET, step, micro, self.rank), dev)  # the network's own randomness
            weight = (b - a) / self.B_local
            sync = self.model.no_sync() if self.ddp and micro < n_micro - 1 else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss = self.model(x0, cond, t, eps)
                (loss if n_micro == 1 else loss * weight).backward()
            part = loss.detach().to(torch.float64)
            loss_acc = part if n_micro == 1 else loss_acc + part * weight
        if self.ddp:
            import torch.distributed as dist

            dist.all_reduce(loss_acc)
            loss_acc /= self.world
        grads = [p.grad for p in self.params if p.grad is not None]
        found = self.found_inf.zero_()
        for gs in _by_dtype(grads).values():  # one fused pass: any NaN or inf gradient?
            torch._amp_foreach_non_finite_check_and_unscale_(gs, found, self._one)
        clipping = self.grad_clip > 0 or self.clip is not None
        norm = _total_norm(grads, dev) if clipping or need_norm else None
        lr = lr_at(step, self.t)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.lr = lr
        if self.host_decides or not self.fused:
            loss_h = float(loss_acc)
            good = not (bool(found) or not math.isfinite(loss_h))
            clipped = self._clip(grads, norm, good) if clipping else False
            if good:
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.update(good)
            self.stats.push(step + 1, [loss_h, math.nan if norm is None else float(norm), not good, bool(clipped)])
        else:  # decided on the device: AdamW's found_inf skips the update, the EMA update is masked
            found.copy_(torch.maximum(found, (~torch.isfinite(loss_acc)).to(found.dtype)))
            good = found[0] == 0
            clipped = self._clip(grads, norm, good) if clipping else torch.zeros((), dtype=torch.bool, device=dev)
            self.opt.found_inf = found
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.update(good)
            nrm = torch.full((), math.nan, dtype=torch.float64, device=dev) if norm is None else norm
            self.stats.push_device(step + 1, torch.stack([loss_acc, nrm, (~good).to(torch.float64),
                                                          clipped.to(torch.float64)]))

    def _clip(self, grads: Sequence[Tensor], norm: Tensor, good: bool | Tensor) -> bool | Tensor:
        """Scale the gradients to the clipping threshold (fixed, adaptive, or the smaller); record the
        norm in the adaptive history. Returns whether the step was clipped."""
        thr = torch.full((), self.grad_clip if self.grad_clip > 0 else math.inf, dtype=torch.float64,
                         device=norm.device)
        if self.clip is not None:
            thr = torch.minimum(thr, self.clip.threshold())
            self.clip.push(norm, good)
        coef = (thr / (norm + 1e-6)).clamp(max=1.0)
        for dtype, gs in _by_dtype(grads).items():
            torch._foreach_mul_(gs, coef.to(dtype))
        clipped = norm > thr
        return bool(clipped) and good if isinstance(good, bool) else clipped & good

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self) -> dict:
        n = min(len(self.valid_set), int(self.t["val_batches"]) * self.B)
        chunk = max(1, self.micro_slices[0][1] - self.micro_slices[0][0])
        g = torch.Generator().manual_seed(mix_seed(self.seed, _VAL))
        t_all = self.objective.sample_t(n, generator=g)
        self._sync_ema_buffers()
        self.den.eval()
        out = {}
        try:
            for name, den in (("val_loss", self.den), ("val_loss_ema", self.ema_den)):
                total = 0.0
                for a in range(0, n, chunk):
                    b = min(n, a + chunk)
                    _seed_everything(mix_seed(self.seed, _VAL, a))
                    examples = [self.valid_set[i] for i in range(a, b)]
                    batch = self.domain.collate(examples, self.data_config).to(self.device)
                    eps = self.example_noise(_VAL, np.arange(a, b), batch.x0)
                    with self._autocast():
                        per = self.objective.per_example(den, batch.x0, t_all[a:b].to(self.device), eps, batch.cond)
                    total += float(per.to(torch.float64).sum())
                out[name] = total / n
        finally:
            self.den.train()
        return out

    @torch.no_grad()
    def sample_metrics(self) -> dict:
        s = self.cfg.get("sample", {})
        den = self.ema_den if s.get("use_ema", True) else self.den
        self._sync_ema_buffers()
        was_training = self.den.training
        self.den.eval()
        try:
            sampler = get_sampler(s.get("sampler", "dpmpp_2m"))
            extra = {k: s[k] for k in ("eta",) if k in s and k in inspect.signature(sampler).parameters}
            grid = make_grid(s.get("grid", "karras"), den.process, int(s.get("steps", 50)))
            w = float(s.get("guidance", 0.0))
            seeds = list(range(int(self.t["sample_n"])))
            size = max(1, int(s.get("batch_size", 256)))
            objects = []
            for a in range(0, len(seeds), size):
                chunk = seeds[a:a + size]
                tmpl = self.domain.template(chunk, self.cfg, self.data_config).to(self.device)
                noise = ExampleNoise(chunk)
                x = prior(den.process, tmpl.x0, noise, t=float(grid[0]))
                d = den
                if w != 0.0 and self.null is not None and isinstance(tmpl.cond, Mapping):
                    d = ClassifierFreeGuidance(den, w, drop_condition(tmpl.cond, 1.0, self.null))
                with self._autocast():
                    x0 = sampler(d, x, grid, tmpl.cond, noise=noise, **extra)
                objects.extend(self.domain.decode(x0, tmpl.cond, self.data_config))
            m = self.domain.metrics(objects, self.data_config)
        finally:
            self.den.train(was_training)
        return {f"sample/{k}": float(v) for k, v in m.items()}

    def _sync_ema_buffers(self) -> None:
        for b_ema, b in zip(self.ema_den.buffers(), self.den.buffers()):
            b_ema.copy_(b)

    # ------------------------------------------------------------------ output
    def open_outputs(self) -> None:
        if not self.main:
            return
        self.log_file = open(self.out / "log.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            self.tb = None
        else:
            self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.main:
            return
        self.log_file.write(json.dumps(record, default=_json_default) + "\n")
        self.log_file.flush()
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def close_outputs(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def save(self, step: int) -> None:
        if not _finite_params(self.params):
            raise self.diverged(step, "the weights became non-finite")
        self.last_ckpt_step = step
        if not self.main:
            self.last_ckpt = checkpoints_dir(self.out) / f"step-{step:08d}"
            return
        self._sync_ema_buffers()
        self.last_ckpt = save_run_checkpoint(
            self.out, step, keep_last=int(self.t["keep_last"]),
            model=self.den.network.state_dict(), ema=self.ema_den.network.state_dict(),
            optimizer=self.opt.state_dict(), extra_tensors=self.state_tensors(), rng=True,
            meta={"domain": self.domain.name, "step": step, "config": self.cfg, "data_config": self.data_config,
                  "metrics": self.metrics, "train": {"world_size": self.world, "examples_seen": step * self.B,
                                                     "train_examples": self.N}})

    def diverged(self, step: int, why: str) -> TrainingDiverged:
        if self.last_ckpt is not None:
            last = f"the last good checkpoint is {self.last_ckpt} (step {self.last_ckpt_step})"
        else:
            last = "no checkpoint was saved before it"
        self.log({"step": step, "event": "diverged", "reason": why, "bad_steps": self.bad_total})
        return TrainingDiverged(f"{self.out}: training diverged at step {step}: {why}; {last}")

    # ------------------------------------------------------------------ the loop
    def run(self, start: int) -> None:
        t = self.t
        total = self.total_steps
        log_every, val_every = int(t["log_every"]), int(t["val_every"])
        sample_every, ckpt_every = int(t["sample_every"]), int(t["ckpt_every"])
        max_bad = int(t["max_bad_steps"])
        self.stats = _Stats()
        self.lr = lr_at(start, t)
        window = {"loss": 0.0, "norm": math.nan, "good": 0, "steps": 0, "time": 0.0}

        def due(every: int, step: int) -> bool:
            return step == total or (every > 0 and step % every == 0)

        def take(flush: bool = False) -> None:
            for s, (loss, norm, bad, clipped) in self.stats.pop(flush):
                window["steps"] += 1
                if bad:
                    self.bad_total += 1
                    self.bad_run += 1
                    if self.bad_run == 1:
                        self.bad_first = s
                    if max_bad > 0 and self.bad_run >= max_bad:
                        raise self.diverged(s, f"{self.bad_run} consecutive steps with a non-finite loss or "
                                               f"gradient (steps {self.bad_first}..{s})")
                else:
                    self.bad_run = 0
                    window["loss"] += loss
                    window["good"] += 1
                window["norm"] = norm  # computed on log steps (and every step when clipping)
                self.clipped_total += int(clipped)

        if val_every > 0 and start == 0 and self.main:
            self.metrics.update(self.validate())
            self.log({"step": 0, **{k: v for k, v in self.metrics.items() if k.startswith("val")}})

        progress = _progress(self.show_progress, total, start)
        micro_iter = self.plan.batches(start, total, int(t["num_workers"]))
        tick = time.perf_counter()
        try:
            with progress:
                for step in range(start, total):
                    done = step + 1
                    self.train_step(step, micro_iter, need_norm=due(log_every, done))
                    take()
                    if progress.task is not None:
                        progress.advance()
                    if not (due(log_every, done) or due(val_every, done) or due(sample_every, done)
                            or due(ckpt_every, done)):
                        continue
                    take(flush=True)
                    now = time.perf_counter()
                    window["time"] += now - tick
                    if due(log_every, done):
                        self.train_time += window["time"]
                        rec = self._train_record(done, window)
                        self.metrics.update({k: v for k, v in rec.items() if k != "step"})
                        self.log(rec)
                        progress.show(rec)
                        window = {"loss": 0.0, "norm": math.nan, "good": 0, "steps": 0, "time": 0.0}
                    if self.main and val_every > 0 and due(val_every, done):
                        v = self.validate()
                        self.metrics.update(v)
                        self.log({"step": done, **v})
                    if self.main and sample_every > 0 and due(sample_every, done):
                        try:
                            m = self.sample_metrics()
                        except Exception as e:  # a failing metric must not kill a long run
                            warnings.warn(f"sample metrics failed at step {done}: {type(e).__name__}: {e}")
                            self.log({"step": done, "sample_error": f"{type(e).__name__}: {e}"})
                        else:
                            self.metrics.update(m)
                            self.log({"step": done, **m})
                    if due(ckpt_every, done):
                        if self.bad_run == 0 or done == total:
                            self.save(done)
                        else:  # keep the good checkpoints: none is written inside a run of bad steps
                            self.log({"step": done, "event": "checkpoint_skipped", "bad_run": self.bad_run})
                    tick = time.perf_counter()
        finally:
            close = getattr(micro_iter, "close", None)
            if close is not None:
                close()

    def _train_record(self, step: int, w: dict) -> dict:
        good = w["good"]
        return {
            "step": step,
            "loss": w["loss"] / good if good else None,
            "lr": self.lr,
            "grad_norm": w["norm"] if math.isfinite(w["norm"]) else None,
            "examples_per_s": w["steps"] * self.B / w["time"] if w["time"] > 0 else None,
            "bad_steps": self.bad_total,
            "clipped_steps": self.clipped_total,
            "elapsed": round(self.train_time, 6),
        }


def _total_norm(grads: Sequence[Tensor], device) -> Tensor:
    """L2 norm of all gradients, float64 (NaN or inf when any entry is): no host sync."""
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch._foreach_norm(grads)
    if len({n.dtype for n in norms}) > 1:
        norms = [n.to(torch.float64) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms)).to(torch.float64)


def _by_dtype(tensors: Sequence[Tensor]) -> dict[torch.dtype, list[Tensor]]:
    out: dict[torch.dtype, list[Tensor]] = {}
    for x in tensors:
        out.setdefault(x.dtype, []).append(x)
    return out


class _NoProgress:
    task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self):
        pass

    def show(self, rec):
        pass


class _RichProgress:
    def __init__(self, total: int, start: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self.task = self.progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self):
        self.progress.advance(self.task)

    def show(self, rec):
        parts = []
        if rec.get("loss") is not None:
            parts.append(f"loss {rec['loss']:.4g}")
        if rec.get("examples_per_s"):
            parts.append(f"{rec['examples_per_s']:.0f} ex/s")
        if rec.get("bad_steps"):
            parts.append(f"bad {rec['bad_steps']}")
        self.progress.update(self.task, info="  ".join(parts))


def _progress(show: bool, total: int, start: int):
    return _RichProgress(total, start) if show else _NoProgress()


# ----------------------------------------------------------------------------- run folder and entry point


def _check_folder(out: Path, cfg: dict, resume: bool) -> Path | None:
    """Check the run folder against the config (reading only); the checkpoint to resume from, or None."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    ckpt_path = latest_checkpoint(out) if out.is_dir() else None
    if ckpt_path is None:
        return None
    if not resume:
        raise InputError(f"{out}: this folder already holds a training run (checkpoint {ckpt_path.name}); "
                         "resume it or train into a new folder")
    stored_path = out / "config.json"
    if stored_path.is_file():
        try:
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{stored_path}: corrupt run config ({e})") from None
    else:
        stored = load_checkpoint(ckpt_path, verify=False).config
    diffs = [k for k in config_differences(stored, cfg) if not _may_change_on_resume(k)]
    if diffs:
        shown = "; ".join(f"{k}: {_dotted(stored, k)!r} in the folder, {_dotted(cfg, k)!r} given" for k in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise InputError(f"{out}: cannot resume with a different configuration: {shown}{more}. Only train.steps, "
                         "the logging/checkpoint cadence and the sample section may change; train into a new folder "
                         "for anything else")
    step = _step_of(ckpt_path)
    if int(cfg["train"]["steps"]) < step:
        raise InputError(f"{out}: train.steps={cfg['train']['steps']} is below the step of the latest checkpoint "
                         f"({step}); raise train.steps to continue")
    return ckpt_path


def _may_change_on_resume(key: str) -> bool:
    """Whether ``key`` or a table holding it is in RESUME_MAY_CHANGE."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in RESUME_MAY_CHANGE for i in range(1, len(parts) + 1))


def _step_of(ckpt_path: Path) -> int:
    return int(ckpt_path.name.split("-", 1)[1])


def _init_folder(out: Path, cfg: dict, step: int) -> None:
    """Write config.json and cut log.jsonl back to ``step`` (what a resumed run will write again)."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # half-written files of a killed run (checkpoints clean their own folder)
    atomic_write_json(out / "config.json", cfg)
    _trim_log(out / "log.jsonl", step)


def _log_lines(path: Path):
    """(line, record) for each whole JSON object line of a log.jsonl; torn lines are skipped."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield line, rec


def read_log(run: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (give the run folder or the file), skipping a line torn
    by a killed writer; [] when there is no log."""
    path = Path(run)
    path = path / "log.jsonl" if path.is_dir() else path
    return [rec for _, rec in _log_lines(path)] if path.is_file() else []


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (written after the checkpoint we resume from) and torn lines."""
    if not path.is_file():
        return
    keep = [line for line, rec in _log_lines(path) if int(rec.get("step", 0)) <= step and step > 0]
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def train(domain: str | Domain, config: dict, out: str | Path, *, device: str | None = None,
          resume: bool = True, progress: bool | None = None) -> TrainResult:
    """Train ``domain``'s denoiser with a resolved ``config`` into the run folder ``out``.

    ``resume``: continue from the folder's latest checkpoint (its config must match, except
    train.steps and cadence keys); ``False`` refuses a folder that holds checkpoints. ``device``:
    "cpu", "cuda", "cuda:1"... or automatic; under torchrun each rank uses its LOCAL_RANK GPU.
    ``progress``: a rich progress bar (default: when stderr is a terminal; rank 0 only)."""
    domain = _get_domain(domain)
    if config.get("domain", domain.name) != domain.name:
        raise InputError(f"the config is for domain '{config.get('domain')}', not '{domain.name}'")
    cfg = deep_merge(deep_merge({"train": TRAIN_DEFAULTS}, domain.default_config()), config)
    cfg["domain"] = domain.name
    cfg = _jsonable(cfg)
    check_train_config(cfg)
    out = Path(out)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank if world > 1 else None)
    own_group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            own_group = True
        world, rank = dist.get_world_size(), dist.get_rank()
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        trainer = None
        trainer = _Trainer(domain, cfg, out, dev, world, rank, bool(progress))
        ckpt_path = _shared(rank, world, lambda: _check_folder(out, cfg, resume))
        ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
        if ckpt is not None:
            check_domain(ckpt, domain.name)
        trainer.load_data(ckpt.data_config if ckpt is not None else None)
        trainer.build()
        start = trainer.load(ckpt) if ckpt is not None else 0
        if start >= trainer.total_steps and ckpt is not None:  # nothing left to do: leave the folder alone
            return TrainResult(trainer.last_ckpt, trainer.last_ckpt_step, dict(trainer.metrics), out)
        probe = trainer.plan.collate(start, 0) if world > 1 and cfg["train"]["ddp_find_unused"] == "auto" else None
        trainer.wrap(probe)
        _shared(rank, world, lambda: _init_folder(out, cfg, start))
        trainer.open_outputs()
        trainer.log({"step": start, "event": "resume" if start else "start", "world_size": world,
                     "device": str(dev), "train_examples": trainer.N})
        if start >= trainer.total_steps:  # steps = 0: save the initial model
            trainer.save(0)
        else:
            trainer.run(start)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        return TrainResult(trainer.last_ckpt, trainer.last_ckpt_step, dict(trainer.metrics), out)
    finally:
        if trainer is not None:
            trainer.close_outputs()
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _shared(rank: int, world: int, fn):
    """Run ``fn`` on rank 0 only and hand its result (a path or None), or its InputError, to every rank."""
    if world == 1:
        return fn()
    import torch.distributed as dist

    msg = [None, None]
    if rank == 0:
        try:
            r = fn()
            msg = [None, str(r) if r is not None else None]
        except InputError as e:
            msg = [str(e), None]
    dist.broadcast_object_list(msg, src=0)
    if msg[0] is not None:
        raise InputError(msg[0])
    return Path(msg[1]) if msg[1] is not None else None
