"""The ``[train]`` table and the schedules it defines (learning rate, EMA decay)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Union

from .schema import Annotated, Check, ConfigError, Table, one_of, unit_interval

DECAYS = ("none", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig(Table):
    """The ``[train]`` table: every setting of the trainer, with its default."""

    steps: Annotated[int, Check(lo=0)] = 1000  # optimizer steps in all (raise it to continue a run)
    max_minutes: Annotated[float, Check(lo=0)] = 0.0  # stop (with a checkpoint) after this much training time this session (0: off)
    batch_size: Annotated[int, Check(lo=1)] = 64  # examples per optimizer step, over all processes
    lr: Annotated[float, Check(lo=0, lo_open=True)] = 1e-4  # AdamW learning rate (peak)
    weight_decay: Annotated[float, Check(lo=0)] = 1e-12  # AdamW decoupled weight decay
    betas: Annotated[list[float], Check(lo=0, hi=1, hi_open=True, length=2)] = field(
        default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    warmup_steps: Annotated[int, Check(lo=0)] = 0  # linear warm-up from 0 over this many steps
    decay: Annotated[str, one_of(DECAYS)] = "none"  # after warm-up: none | cosine | linear down to min_lr_ratio * lr
    min_lr_ratio: Annotated[float, unit_interval()] = 0.0  # the learning rate at the last step, over lr
    ema_decay: Annotated[float, unit_interval()] = 0.999  # EMA decay d: ema <- ema + (1 - d_n)(theta - ema)
    ema_warmup: Annotated[int, Check(lo=0)] = 10  # d_n = min(ema_decay, n / (n + ema_warmup)); 0: constant
    grad_clip: Annotated[float, Check(lo=0)] = 0.0  # total-norm clipping threshold (0: off)
    adaptive_clip: bool = False  # clip at 1.5 mean + 2 std of recent pre-clip norms
    adaptive_clip_window: Annotated[int, Check(lo=2)] = 50  # norms of the last this-many good steps
    adaptive_clip_start: Annotated[int, Check(lo=2)] = 10  # good steps seen before adaptive clipping engages
    grad_accum: Annotated[int, Check(lo=1)] = 1  # micro-batches per optimizer step
    bf16: bool = True  # bf16 autocast of the forward pass on CUDA (never on the CPU)
    compile: bool = False  # torch.compile the network
    ddp_find_unused: Union[bool, str] = "auto"  # DDP find_unused_parameters; "auto" probes the first batch once
    seed: Annotated[int, Check(lo=0)] = 0  # everything random in training is a function of this seed
    log_every: Annotated[int, Check(lo=0)] = 50  # steps between log lines
    val_every: Annotated[int, Check(lo=0)] = 0  # steps between validation losses (0: never)
    val_batches: Annotated[int, Check(lo=1)] = 4  # validation examples: at most val_batches * batch_size
    sample_every: Annotated[int, Check(lo=0)] = 0  # steps between sample metrics (0: never)
    sample_n: Annotated[int, Check(lo=1)] = 64  # samples (seeds 0..n-1) for each sample-metrics point
    ckpt_every: Annotated[int, Check(lo=0)] = 500  # steps between checkpoints (the last step is always saved)
    keep_last: Annotated[int, Check(lo=0)] = 3  # checkpoints kept (0: all)
    max_bad_steps: Annotated[int, Check(lo=0)] = 20  # consecutive non-finite steps that stop the run (0: never)
    num_workers: Annotated[int, Check(lo=0)] = 0  # DataLoader processes collating batches (0: in the loop)

    @classmethod
    def check(cls, table: dict, cfg: dict) -> None:
        if table["ddp_find_unused"] not in ("auto", True, False):
            raise ConfigError("train.ddp_find_unused", f"must be \"auto\", true or false, got "
                                                       f"{table['ddp_find_unused']!r}")


def lr_at(step: int, t: TrainConfig | Mapping) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1`` completed steps.

    Warm-up: lr (k + 1) / warmup_steps for k < warmup_steps. Then, with p = (k - warmup) /
    (steps - warmup): none 1; linear 1 - (1 - r) p; cosine r + (1 - r)(1 + cos(pi p)) / 2, times lr,
    where r = min_lr_ratio (so lr(steps) = r lr)."""
    t = t if isinstance(t, TrainConfig) else TrainConfig.of({**TrainConfig.defaults(), **t})
    lr, warm = float(t.lr), int(t.warmup_steps)
    if warm > 0 and step < warm:
        return lr * (step + 1) / warm
    if t.decay == "none":
        return lr
    r = float(t.min_lr_ratio)
    p = min(1.0, max(0.0, (step - warm) / max(1, int(t.steps) - warm)))
    if t.decay == "linear":
        return lr * (1.0 - (1.0 - r) * p)
    if t.decay == "cosine":
        return lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p)))
    raise ValueError(f"train.decay must be one of {DECAYS}, got {t.decay!r}")


def ema_decay_at(n: int, decay: float, warmup: float) -> float:
    """Decay of the n-th EMA update (n = 1, 2, ...): min(decay, n / (n + warmup)); ``decay`` when warmup = 0."""
    return decay if warmup <= 0 else min(decay, n / (n + warmup))
