"""What a training step carries: the training state a checkpoint restores, the per-step records
that reach the host, the loss module DDP wraps, and the training noise."""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_weights
from .data_plan import VAL, seed_everything, seed_torch
from .domain import Domain
from .guards import EMA, AdaptiveClip
from .io import InputError
from .noise import ExampleNoise, keyed_seeds, mix_seed
from .state import State
from .train_config import TrainConfig


def example_noise(x0: State, positions: Sequence[int] | np.ndarray, key: int) -> State:
    """Standard noise shaped like ``x0`` in each field's space, example i's draws keyed by
    (key, positions[i]) alone (``ExampleNoise`` on seeds hashed from them): a DDP slice or an
    accumulation micro-batch draws exactly what the whole batch would."""
    noise = ExampleNoise(keyed_seeds(key, positions), device=x0.device)
    return noise.normal(x0)


class StepRecord(NamedTuple):
    """What one step reports to the host."""

    loss: float
    grad_norm: float  # NaN when not computed (no clipping, not a log step)
    bad: bool
    clipped: bool


class _Stats:
    """Per-step records from the device to the host. On CUDA the copy is non-blocking and read one
    step later (the GPU is never drained by the trainer); on the CPU the trainer hands over floats."""

    def __init__(self):
        self.pending: deque = deque()

    def push(self, step: int, record: StepRecord) -> None:
        self.pending.append((step, record, None))

    def push_device(self, step: int, values: Tensor) -> None:
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self.pending.append((step, host, ev))

    def pop(self, flush: bool = False) -> Iterator[tuple[int, StepRecord]]:
        while self.pending:
            step, values, ev = self.pending[0]
            if ev is not None:
                if not flush and len(self.pending) == 1 and not ev.query():
                    return
                ev.synchronize()
                loss, norm, bad, clipped = values.tolist()
                values = StepRecord(loss, norm, bool(bad), bool(clipped))
            self.pending.popleft()
            yield step, values


class _Loss(nn.Module):
    """The training loss as a module, so DDP sees the whole denoiser (every parameter) in one forward."""

    def __init__(self, denoiser: nn.Module, objective):
        super().__init__()
        self.denoiser = denoiser
        self.objective = objective

    def forward(self, x0: State, cond, t: Tensor, eps: State, self_cond: Tensor | None = None) -> Tensor:
        return self.objective.per_example(self.denoiser, x0, t, eps, cond, self_cond=self_cond).mean()


# ----------------------------------------------------------------------------- the training state


class TrainState:
    """What a checkpoint restores: the denoiser, its EMA copy, the optimizer, the EMA counter, the
    adaptive-clip history and the bad-step counters."""

    def __init__(self, domain: Domain, cfg: dict, data_config: dict, t: TrainConfig, device: torch.device):
        seed_torch(t.seed)  # initial weights: a function of the seed alone, equal on all ranks
        seed_everything(t.seed)
        self.den = domain.build_denoiser(cfg, data_config).to(device)
        self.den.train()
        self.ema_den = copy.deepcopy(self.den).eval().requires_grad_(False)
        names = [n for n, p in self.den.named_parameters() if p.requires_grad]
        self.params = [p for p in self.den.parameters() if p.requires_grad]
        if not self.params:
            raise InputError(f"domain '{domain.name}': the denoiser has no trainable parameters")
        ema_of = dict(self.ema_den.named_parameters())
        self.ema = EMA(self.params, [ema_of[n] for n in names], t.ema_decay, t.ema_warmup, device)
        self.clip = AdaptiveClip(t.adaptive_clip_window, t.adaptive_clip_start, device) if t.adaptive_clip else None
        kw = dict(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        try:
            self.opt = torch.optim.AdamW(self.params, fused=True, **kw)
            self.fused = True
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            self.opt = torch.optim.AdamW(self.params, **kw)
            self.fused = False
        self.bad_total = self.bad_run = self.bad_first = self.clipped_total = 0

    def tensors(self) -> dict[str, Tensor]:
        out = {"ema/updates": self.ema.updates, "bad/total": torch.tensor(self.bad_total),
               "bad/run": torch.tensor(self.bad_run), "bad/first": torch.tensor(self.bad_first),
               "clip/clipped": torch.tensor(self.clipped_total)}
        if self.clip is not None:
            out.update(self.clip.state())
        return out

    def load(self, ckpt, device: torch.device) -> int:
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
            self.bad_total, self.bad_run = int(extra["bad/total"]), int(extra["bad/run"])
            self.bad_first, self.clipped_total = int(extra["bad/first"]), int(extra["clip/clipped"])
            if self.clip is not None:
                self.clip.load({k: v.to(device) for k, v in extra.items() if k.startswith("clip/")})
        except KeyError as e:
            raise CheckpointError(f"{src}: trainer state lacks {e} (not a checkpoint written by train()?)") from None
        ckpt.restore_rng()
        return ckpt.step

    def sync_ema_buffers(self) -> None:
        for b_ema, b in zip(self.ema_den.buffers(), self.den.buffers()):
            b_ema.copy_(b)


@torch.no_grad()
def validation_losses(domain: Domain, objective, state: TrainState, examples: Sequence, data_config: dict, *, n: int,
                      chunk: int, seed: int, device: torch.device, autocast, cfg: dict) -> dict:
    """The loss of the model and of its EMA on the first ``n`` validation examples, with times and
    noise fixed by the seed: {"val_loss": ..., "val_loss_ema": ...}, and where the state has several
    fields each field's share of the model's loss ("val_loss/<field>", summing to "val_loss")."""
    g = torch.Generator().manual_seed(mix_seed(seed, VAL))
    t_all = objective.sample_t(n, state.den.process, generator=g)
    state.sync_ema_buffers()
    state.den.eval()
    out = {}
    try:
        for name, den in (("val_loss", state.den), ("val_loss_ema", state.ema_den)):
            total, fields = 0.0, {}
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                seed_everything(mix_seed(seed, VAL, a))
                batch = domain.collate([examples[i] for i in range(a, b)], data_config).to(device)
                eps = domain.align_noise(batch.x0, example_noise(batch.x0, range(a, b), mix_seed(seed, VAL)), cfg)
                parts: dict | None = {} if name == "val_loss" else None  # the shares of the model's loss
                with autocast():
                    per = objective.per_example(den, batch.x0, t_all[a:b].to(device), eps, batch.cond, parts=parts)
                total += float(per.to(torch.float64).sum())
                for k, v in (parts or {}).items():
                    fields[k] = fields.get(k, 0.0) + float(v.sum())
            out[name] = total / n
            if len(fields) > 1:
                out.update({f"val_loss/{k}": v / n for k, v in fields.items()})
    finally:
        state.den.train()
    return out


@dataclass
class _Window:
    """What happened since the last log line."""

    loss: float = 0.0
    norm: float = math.nan
    good: int = 0
    steps: int = 0
    time: float = 0.0


def progress_text(rec: dict) -> str:
    parts = []
    if rec.get("loss") is not None:
        parts.append(f"loss {rec['loss']:.4g}")
    if rec.get("examples_per_s"):
        parts.append(f"{rec['examples_per_s']:.0f} ex/s")
    if rec.get("bad_steps"):
        parts.append(f"bad {rec['bad_steps']}")
    return "  ".join(parts)


