"""The trainer: one domain-agnostic training loop for every domain.

    from sciffusion.core.train import train
    result = train("points2d", resolve_config(domain, "run.toml"), "runs/points", device=None)

Every setting is a key of the ``[train]`` table (``core.train_config.TrainConfig``, one comment
each). What the loop does, scene by scene (:meth:`Trainer.run`):

1. Draw the step: the micro-batches of the data plan (``core.data_plan``), the diffusion times and
   condition-dropout flags of the step's B positions, and each example's noise.
2. Accumulate gradients over ``grad_accum`` micro-batches (DDP syncs on the last one), under bf16
   autocast on CUDA when ``bf16``.
3. Guard: one fused check of all gradients for NaN/inf; clip (fixed ``grad_clip``, adaptive
   ``adaptive_clip``: 1.5 mean + 2 std of recent good norms; the smaller applies).
4. Update: AdamW at ``lr_at(step)`` (warm-up, then none | cosine | linear decay) and the EMA
   (``ema_decay``, ``ema_warmup``). A bad step skips both and is counted; ``max_bad_steps`` in a
   row stop the run with :class:`TrainingDiverged` naming the last good checkpoint. On CUDA the
   skip is decided on the device and the step's scalars reach the host one step late, so the
   trainer never drains the GPU; on the CPU it is decided on the host.
5. Report and keep: log lines (``log_every``), validation loss (``val_every``; and at step 0),
   sample metrics (``sample_every``: ``sample_n`` seeds through the one sampling path,
   ``core.sampling.generate_batch``, with the ``[sample]`` table), checkpoints (``ckpt_every``;
   none inside a run of bad steps, none of non-finite weights; ``keep_last``).

Determinism. Everything random in a step is a pure function of (seed, step, example position): the
data plan's positions; the times and dropout draws of the B positions from a generator seeded by
(seed, step); each example's noise from ``ExampleNoise`` keyed by (seed, stream, position); torch's
global generator reseeded from (seed, step, micro-batch, rank) before every forward (network
dropout). So resuming needs only the checkpoint's step, weights, EMA, optimizer and trainer
tensors, and is bitwise exact on the same machine; a 2-process DDP run and ``grad_accum``
reproduce the single-process step up to float summation order. :func:`batch_indices` tells which
examples a step used.

Run folder (``core.run_folder``): ``config.json``, ``log.jsonl`` (training records: step, loss
(mean over the good steps since the last line), lr, grad_norm (pre-clip, this step),
examples_per_s, bad_steps, clipped_steps, elapsed; validation ("val_loss", "val_loss_ema");
samples ("sample/<metric>", "sample/network_calls"); events ("event")), ``checkpoints/``,
``tensorboard/``. DDP under ``torchrun``: gloo on the CPU, NCCL on CUDA; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .checkpoint import check_domain, checkpoints_dir, latest_checkpoint, load_checkpoint, save_run_checkpoint
from .config import jsonable
from .data_plan import NET, NOISE, TIME, DataPlan, MicroBatch, batch_indices, seed_torch
from .distributed import Distributed, PeerLost, lost_peer, pick_device
from .domain import Domain, check_data_paths, resolve_config
from .guards import EMA, AdaptiveClip, TrainingDiverged, by_dtype, finite_params, total_norm
from .io import InputError
from .registry import as_domain, load_denoiser, provider
from .noise import mix_seed
from .objectives import replace_condition
from .pictures import training_pictures
from .progress import Progress
from .run_folder import RESUME_MAY_CHANGE, RunLog, check_folder, init_folder, read_log
from .sampling import sample_metrics
from .train_config import TrainConfig, ema_decay_at, lr_at
from .train_state import StepRecord, TrainState, _Loss, _Stats, _Window, example_noise, progress_text, validation_losses

__all__ = ["train", "TrainResult", "TrainingDiverged", "lr_at", "ema_decay_at", "EMA", "AdaptiveClip",
           "load_denoiser", "batch_indices", "example_noise", "read_log", "TrainConfig", "RESUME_MAY_CHANGE"]


@dataclass
class TrainResult:
    checkpoint: Path  # the last checkpoint folder
    step: int
    metrics: dict = field(default_factory=dict)
    run_dir: Path = Path(".")


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run on this process (a rank of a DDP job, or the only one)."""

    def __init__(self, domain: Domain, cfg: dict, out: Path, device: torch.device, ctx: Distributed,
                 progress: bool | None = None):
        self.domain, self.cfg, self.out, self.device, self.ctx = domain, cfg, out, device, ctx
        self.tc = TrainConfig.of(cfg["train"])
        self.show_progress = ctx.main and (sys.stderr.isatty() if progress is None else bool(progress))
        self.B = self.tc.batch_size
        if self.B % ctx.world:
            raise InputError(f"train.batch_size={self.B} must be divisible by the number of processes ({ctx.world})")
        self.B_local = self.B // ctx.world
        if self.tc.grad_accum > self.B_local:
            raise InputError(f"train.grad_accum={self.tc.grad_accum} exceeds the batch of each process "
                             f"({self.B_local} examples)")
        self.use_bf16 = self.tc.bf16 and device.type == "cuda"
        self.log = RunLog(out, False)
        self.last_ckpt: Path | None = None
        self.last_ckpt_step = 0
        self.metrics: dict = {}
        self.train_time = 0.0  # seconds in training steps (without evaluation and checkpoints) this session
        self.step = 0  # steps completed

    # ------------------------------------------------------------------ set-up, in this order
    def load_data(self, data_config: dict | None) -> None:
        data_cfg = self.cfg.get("data", {})
        where = data_cfg.get("path") or data_cfg
        self.train_set = self.domain.load_dataset(data_cfg, "train")
        self.N = len(self.train_set)
        if self.N == 0:
            raise InputError(f"{where}: the training split is empty (no examples to train on)")
        if self.B > self.N:
            raise InputError(f"train.batch_size={self.B} is larger than the training set ({self.N} examples from {where})")
        fresh = jsonable(self.domain.data_config(self.train_set, self.cfg))
        if data_config is not None and fresh != data_config:
            warnings.warn(f"{where}: the training data changed since the checkpoint; continuing with the "
                          "checkpoint's data config (the resumed run is not an exact continuation)")
        self.data_config = fresh if data_config is None else data_config
        self.plan = DataPlan(self.domain, self.train_set, self.data_config, self.tc.seed, self.B, self.ctx.rank,
                             self.ctx.world, self.tc.grad_accum)
        self.valid_set: Sequence = []
        if self.tc.val_every > 0 and self.ctx.main:
            self.valid_set = self.domain.load_dataset(data_cfg, "valid")
            if len(self.valid_set) == 0:
                raise InputError(f"{where}: train.val_every={self.tc.val_every} but the validation split is empty")

    def build(self) -> None:
        self.state = TrainState(self.domain, self.cfg, self.data_config, self.tc, self.device)
        self.objective = self.domain.build_objective(self.cfg)
        self.null = self.domain.null_condition(self.cfg, self.data_config)
        self.p_drop = float(self.cfg["objective"]["condition_dropout"])
        self.p_sc = float(self.cfg["objective"]["self_conditioning"])
        self.found_inf = torch.zeros(1, dtype=torch.float32, device=self.device)
        self._one = torch.ones(1, dtype=torch.float32, device=self.device)
        # On the CPU nothing runs ahead of the host, so reading a scalar is free: skip decisions are
        # taken on the host there, and on the device (no sync) everywhere else.
        self.host_decides = self.device.type == "cpu" or not self.state.fused

    def wrap(self, probe: MicroBatch | None) -> None:
        """The forward used for training: compiled and/or DDP-wrapped views of the same parameters."""
        den = self.state.den
        fwd = den
        if self.tc.compile:
            fwd = copy.copy(den)
            fwd._modules = dict(den._modules)
            fwd.network = torch.compile(den.network)
        self.loss_fn: nn.Module = _Loss(fwd, self.objective)
        self.forward_loss: nn.Module = self.loss_fn
        self.ddp = False
        if self.ctx.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = self.tc.ddp_find_unused
            if unused == "auto":
                unused = self._probe_unused(probe)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_loss = DDP(self.loss_fn, device_ids=ids, find_unused_parameters=bool(unused))
            self.ddp = True

    def _probe_unused(self, mb: MicroBatch) -> bool:
        """Does one backward pass leave some parameter without a gradient (on any rank)?"""
        batch = mb.batch.to(self.device)
        n = batch.x0.batch_size
        t = self.objective.sample_t(n, self.state.den.process, generator=torch.Generator().manual_seed(0),
                                    device=self.device)
        eps = self.domain.align_noise(batch.x0, example_noise(batch.x0, range(n), 0), self.cfg)
        with self._autocast():
            self.loss_fn(batch.x0, batch.cond, t, eps).backward()
        flag = torch.tensor([float(any(p.grad is None for p in self.state.params))], device=self.device)
        self.state.opt.zero_grad(set_to_none=True)
        return bool(self.ctx.all_reduce_max(flag).item())

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_bf16 else contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def step_draws(self, step: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Times, condition-dropout flags and self-conditioning flags of the B positions of a step (CPU)."""
        g = torch.Generator().manual_seed(mix_seed(self.tc.seed, TIME, step))
        t = self.objective.sample_t(self.B, self.state.den.process, generator=g)
        drop = torch.rand(self.B, generator=g) < self.p_drop if self.p_drop > 0 and self.null is not None else None
        sc = torch.rand(self.B, generator=g) < self.p_sc if self.p_sc > 0 else None
        return t, drop, sc

    def _drop(self, cond, drop: Tensor):
        if not isinstance(cond, Mapping):
            raise InputError(f"domain '{self.domain.name}': condition dropout needs the batch condition as a dict "
                             f"of tensors, got {type(cond).__name__}")
        return replace_condition(cond, drop, self.null)

    def train_step(self, step: int, micro_iter: Iterator[MicroBatch], need_norm: bool = False) -> None:
        """One optimizer step (``grad_accum`` micro-batches); ``need_norm``: compute the gradient norm
        even without clipping (for the log)."""
        st, dev = self.state, self.device
        # 1. the step's draws
        t_all, drop_all, sc_all = self.step_draws(step)
        loss_acc = torch.zeros((), dtype=torch.float64, device=dev)
        n_micro = len(self.plan.micro_slices)  # 1 without accumulation: no loss scaling then
        offset = self.ctx.rank * self.B_local
        # 2. accumulate gradients
        for micro in range(n_micro):
            mb = next(micro_iter)
            a, b = self.plan.micro_slices[micro]
            batch = mb.batch.to(dev)
            x0, cond = batch.x0, batch.cond
            if x0.batch_size != b - a:
                raise InputError(f"domain '{self.domain.name}': collate returned {x0.batch_size} examples for "
                                 f"{b - a} inputs")
            t = t_all[offset + a:offset + b].to(dev)
            if drop_all is not None and cond is not None:
                cond = self._drop(cond, drop_all[offset + a:offset + b])
            eps = self.domain.align_noise(x0, example_noise(x0, mb.positions, mix_seed(self.tc.seed, NOISE)), self.cfg)
            sc = sc_all[offset + a:offset + b].to(dev) if sc_all is not None else None
            seed_torch(mix_seed(self.tc.seed, NET, step, micro, self.ctx.rank), dev)  # the network's own randomness
            weight = (b - a) / self.B_local
            sync = self.forward_loss.no_sync() if self.ddp and micro < n_micro - 1 else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss = self.forward_loss(x0, cond, t, eps, sc)
                (loss if n_micro == 1 else loss * weight).backward()
            part = loss.detach().to(torch.float64)
            loss_acc = part if n_micro == 1 else loss_acc + part * weight
        self.ctx.all_reduce_mean(loss_acc)
        # 3. guard: any NaN or inf gradient (one fused pass), the norm, clipping
        grads = [p.grad for p in st.params if p.grad is not None]
        found = self.found_inf.zero_()
        for gs in by_dtype(grads).values():
            torch._amp_foreach_non_finite_check_and_unscale_(gs, found, self._one)
        clipping = self.tc.grad_clip > 0 or st.clip is not None
        norm = total_norm(grads, dev) if clipping or need_norm else None
        # 4. update (skipped on a bad step)
        self.lr = lr_at(step, self.tc)
        for group in st.opt.param_groups:
            group["lr"] = self.lr
        if self.host_decides:
            loss_h = float(loss_acc)
            good = not (bool(found) or not math.isfinite(loss_h))
            clipped = self._clip(grads, norm, good) if clipping else False
            if good:
                st.opt.step()
            st.opt.zero_grad(set_to_none=True)
            st.ema.update(good)
            self.stats.push(step + 1, StepRecord(loss_h, math.nan if norm is None else float(norm), not good,
                                                 bool(clipped)))
        else:  # decided on the device: AdamW's found_inf skips the update, the EMA update is masked
            found.copy_(torch.maximum(found, (~torch.isfinite(loss_acc)).to(found.dtype)))
            good = found[0] == 0
            clipped = self._clip(grads, norm, good) if clipping else torch.zeros((), dtype=torch.bool, device=dev)
            st.opt.found_inf = found
            st.opt.step()
            st.opt.zero_grad(set_to_none=True)
            st.ema.update(good)
            nrm = torch.full((), math.nan, dtype=torch.float64, device=dev) if norm is None else norm
            self.stats.push_device(step + 1, torch.stack([loss_acc, nrm, (~good).to(torch.float64),
                                                          clipped.to(torch.float64)]))

    def _clip(self, grads: Sequence[Tensor], norm: Tensor, good: bool | Tensor) -> bool | Tensor:
        """Scale the gradients to the clipping threshold (fixed, adaptive, or the smaller); record the
        norm in the adaptive history. Returns whether the step was clipped."""
        st = self.state
        thr = torch.full((), self.tc.grad_clip if self.tc.grad_clip > 0 else math.inf, dtype=torch.float64,
                         device=norm.device)
        if st.clip is not None:
            thr = torch.minimum(thr, st.clip.threshold())
            st.clip.push(norm, good)
        coef = (thr / (norm + 1e-6)).clamp(max=1.0)
        for dtype, gs in by_dtype(grads).items():
            torch._foreach_mul_(gs, coef.to(dtype))
        clipped = norm > thr
        return bool(clipped) and good if isinstance(good, bool) else clipped & good

    # ------------------------------------------------------------------ evaluation
    def validate(self) -> dict:
        chunk = max(1, self.plan.micro_slices[0][1] - self.plan.micro_slices[0][0])
        return validation_losses(self.domain, self.objective, self.state, self.valid_set, self.data_config,
                                 n=min(len(self.valid_set), self.tc.val_batches * self.B), chunk=chunk,
                                 seed=self.tc.seed, device=self.device, autocast=self._autocast, cfg=self.cfg)

    @torch.no_grad()
    def sample_metrics(self) -> dict:
        """``sample_n`` samples (seeds 0..n-1) through the one sampling path, scored by the domain."""
        st = self.state
        st.sync_ema_buffers()
        den = st.ema_den if self.cfg["sample"]["use_ema"] else st.den
        was_training = st.den.training
        st.den.eval()
        try:
            m = sample_metrics(self.domain, den, self.cfg, self.data_config, range(self.tc.sample_n), self.device)
        finally:
            st.den.train(was_training)
        return {f"sample/{k}": float(v) for k, v in m.items()}

    # ------------------------------------------------------------------ output
    def save(self, step: int) -> None:
        st = self.state
        if not finite_params(st.params):
            raise self.diverged(step, "the weights became non-finite")
        self.last_ckpt_step = step
        if not self.ctx.main:
            self.last_ckpt = checkpoints_dir(self.out) / f"step-{step:08d}"
            return
        st.sync_ema_buffers()
        self.last_ckpt = save_run_checkpoint(
            self.out, step, keep_last=self.tc.keep_last,
            model=st.den.network.state_dict(), ema=st.ema_den.network.state_dict(),
            optimizer=st.opt.state_dict(), extra_tensors=st.tensors(), rng=True,
            meta={"domain": self.domain.name, "step": step, "config": self.cfg, "data_config": self.data_config,
                  "metrics": self.metrics, "plugin": provider(self.domain),
                  "train": {"world_size": self.ctx.world, "examples_seen": step * self.B, "train_examples": self.N}})
        self.draw_pictures()

    def draw_pictures(self) -> None:
        """loss.png and sample_metrics.png of the run from its log, redrawn at every checkpoint (rank 0);
        a picture that fails to draw only warns."""
        try:
            training_pictures(self.out, title=f"{self.domain.name}: {self.out.name}")
        except Exception as e:  # noqa: BLE001 - a picture must not stop a run
            warnings.warn(f"{self.out}: the training pictures failed ({type(e).__name__}: {e})")

    def peer_lost(self, error: BaseException) -> PeerLost:
        """The error every surviving rank stops with when another rank is gone (logged by rank 0)."""
        last = latest_checkpoint(self.out)
        resume = (f"the last complete checkpoint is {last}" if last is not None else "no checkpoint is complete yet")
        said = str(error).splitlines()[0] if str(error) else ""
        self.log({"step": self.step, "event": "peer_lost", "rank": self.ctx.rank,
                  "error": said[:300] or type(error).__name__})
        return PeerLost(f"{self.out}: rank {self.ctx.rank} of {self.ctx.world} lost contact with the other ranks "
                        f"after step {self.step} (a process or node died, or the network failed); {resume}: run "
                        f"the same command on every node again to resume from it ({type(error).__name__}: "
                        f"{said[:200]})")

    def diverged(self, step: int, why: str) -> TrainingDiverged:
        if self.last_ckpt is not None:
            last = f"the last good checkpoint is {self.last_ckpt} (step {self.last_ckpt_step})"
        else:
            last = "no checkpoint was saved before it"
        self.log({"step": step, "event": "diverged", "reason": why, "bad_steps": self.state.bad_total})
        return TrainingDiverged(f"{self.out}: training diverged at step {step}: {why}; {last}")

    # ------------------------------------------------------------------ the loop
    def run(self, start: int) -> None:
        total, tc = self.tc.steps, self.tc
        self.stats = _Stats()
        self.lr = lr_at(start, tc)
        window = _Window()

        def due(every: int, step: int) -> bool:
            return step == total or (every > 0 and step % every == 0)

        if tc.val_every > 0 and start == 0 and self.ctx.main:
            self.metrics.update(self.validate())
            self.log({"step": 0, **{k: v for k, v in self.metrics.items() if k.startswith("val")}})

        micro_iter = self.plan.batches(start, total, tc.num_workers)
        tick = time.perf_counter()
        try:
            with Progress("train", total, start, self.show_progress) as bar:
                for step in range(start, total):
                    done = step + 1
                    self.step = step
                    # scenes 1-4: draw, accumulate, guard, update
                    self.train_step(step, micro_iter, need_norm=due(tc.log_every, done))
                    self._take(window)
                    bar.advance()
                    out_of_time = tc.max_minutes > 0 and self.train_time + window.time + time.perf_counter() - tick \
                        >= 60.0 * tc.max_minutes
                    if tc.max_minutes > 0:
                        out_of_time = bool(self.ctx.broadcast(out_of_time))  # rank 0's clock decides for all
                    if out_of_time:
                        total = done  # the time budget ends the run here: every cadence is due now
                    if not any(due(e, done) for e in (tc.log_every, tc.val_every, tc.sample_every, tc.ckpt_every)):
                        continue
                    # scene 5: report and keep
                    self._take(window, flush=True)
                    now = time.perf_counter()
                    window.time += now - tick
                    if due(tc.log_every, done):
                        self.train_time += window.time
                        rec = self._train_record(done, window)
                        self.metrics.update({k: v for k, v in rec.items() if k != "step"})
                        self.log(rec)
                        bar.show(progress_text(rec))
                        window = _Window()
                    if self.ctx.main and tc.val_every > 0 and due(tc.val_every, done):
                        v = self.validate()
                        self.metrics.update(v)
                        self.log({"step": done, **v})
                    if self.ctx.main and tc.sample_every > 0 and due(tc.sample_every, done):
                        self._log_sample_metrics(done)
                    if due(tc.ckpt_every, done):
                        if self.state.bad_run == 0 or done == total:
                            self.save(done)
                        else:  # keep the good checkpoints: none is written inside a run of bad steps
                            self.log({"step": done, "event": "checkpoint_skipped", "bad_run": self.state.bad_run})
                    if out_of_time:
                        self.log({"step": done, "event": "time_budget", "minutes": tc.max_minutes})
                        break
                    tick = time.perf_counter()
        finally:
            close = getattr(micro_iter, "close", None)
            if close is not None:
                close()

    def _take(self, window: "_Window", flush: bool = False) -> None:
        """Count the steps whose records reached the host; stop on too many bad steps in a row."""
        st, max_bad = self.state, self.tc.max_bad_steps
        for s, rec in self.stats.pop(flush):
            window.steps += 1
            if rec.bad:
                st.bad_total += 1
                st.bad_run += 1
                if st.bad_run == 1:
                    st.bad_first = s
                if max_bad > 0 and st.bad_run >= max_bad:
                    raise self.diverged(s, f"{st.bad_run} consecutive steps with a non-finite loss or "
                                           f"gradient (steps {st.bad_first}..{s})")
            else:
                st.bad_run = 0
                window.loss += rec.loss
                window.good += 1
            window.norm = rec.grad_norm  # computed on log steps (and every step when clipping)
            st.clipped_total += int(rec.clipped)

    def _log_sample_metrics(self, step: int) -> None:
        try:
            m = self.sample_metrics()
        except Exception as e:  # a failing metric must not kill a long run
            warnings.warn(f"sample metrics failed at step {step}: {type(e).__name__}: {e}")
            self.log({"step": step, "sample_error": f"{type(e).__name__}: {e}"})
        else:
            self.metrics.update(m)
            self.log({"step": step, **m})

    def _train_record(self, step: int, w: "_Window") -> dict:
        return {
            "step": step,
            "loss": w.loss / w.good if w.good else None,
            "lr": self.lr,
            "grad_norm": w.norm if math.isfinite(w.norm) else None,
            "examples_per_s": w.steps * self.B / w.time if w.time > 0 else None,
            "bad_steps": self.state.bad_total,
            "clipped_steps": self.state.clipped_total,
            "elapsed": round(self.train_time, 6),
        }


# ----------------------------------------------------------------------------- entry point


def train(domain: str | Domain, config: Mapping, out: str | Path, *, device: str | None = None,
          resume: bool = True, progress: bool | None = None) -> TrainResult:
    """Train ``domain``'s denoiser with ``config`` (resolved by ``resolve_config``, or any partial
    config: it is completed with the defaults and checked) into the run folder ``out``.

    ``resume``: continue from the folder's latest checkpoint (its config must match, except the keys
    in RESUME_MAY_CHANGE); ``False`` refuses a folder that holds checkpoints. ``device``: "cpu",
    "cuda", "cuda:1"... or automatic; under torchrun each rank uses its LOCAL_RANK GPU.
    ``progress``: a rich progress bar (default: when stderr is a terminal; rank 0 only)."""
    domain = as_domain(domain)
    if config.get("domain", domain.name) != domain.name:
        raise InputError(f"the config is for domain '{config.get('domain')}', not '{domain.name}'")
    cfg = jsonable(resolve_config(domain, dict(config)))
    check_data_paths(domain, cfg)
    out = Path(out)
    world = Distributed.requested_world()
    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None)
    ctx = Distributed.start("nccl" if dev.type == "cuda" else "gloo")
    trainer = None
    try:
        # the run folder and the checkpoint to resume from (rank 0 decides, every rank learns)
        trainer = Trainer(domain, cfg, out, dev, ctx, progress)
        found = ctx.on_main(lambda: _checked_folder(domain, out, cfg, resume))
        ckpt = load_checkpoint(found) if found is not None else None
        if ckpt is not None:
            check_domain(ckpt, domain.name)
        # data, model, optimizer; then the state of the checkpoint
        trainer.load_data(ckpt.data_config if ckpt is not None else None)
        trainer.build()
        start = trainer.state.load(ckpt, dev) if ckpt is not None else 0
        trainer.step = start
        if ckpt is not None:
            trainer.last_ckpt, trainer.last_ckpt_step = ckpt.path, ckpt.step
            trainer.metrics = dict(ckpt.meta.get("metrics", {}))
        if start >= trainer.tc.steps and ckpt is not None:  # nothing left to do: leave the folder alone
            return TrainResult(trainer.last_ckpt, trainer.last_ckpt_step, dict(trainer.metrics), out)
        probe = trainer.plan.collate(start, 0) if ctx.active and trainer.tc.ddp_find_unused == "auto" else None
        trainer.wrap(probe)
        ctx.on_main(lambda: init_folder(out, cfg, start))
        trainer.log = RunLog(out, ctx.main)
        trainer.log({"step": start, "event": "resume" if start else "start", "world_size": ctx.world,
                     "device": str(dev), "train_examples": trainer.N})
        if start >= trainer.tc.steps:  # steps = 0: save the initial model
            trainer.save(0)
        else:
            trainer.run(start)
        ctx.barrier()
        return TrainResult(trainer.last_ckpt, trainer.last_ckpt_step, dict(trainer.metrics), out)
    except Exception as e:
        if ctx.active and trainer is not None and not isinstance(e, PeerLost) and lost_peer(e):
            raise trainer.peer_lost(e) from e
        raise
    finally:
        if trainer is not None:
            trainer.log.close()
        ctx.close()


def _checked_folder(domain: Domain, out: Path, cfg: dict, resume: bool) -> str | None:
    """The folder's checkpoint to resume from (as a string, for the other ranks), or None."""
    path = check_folder(out, cfg, resume, complete=lambda stored: resolve_config(domain, stored))
    return None if path is None else str(path)

