"""The trainer on the third-party points2d domain: determinism, exact resume after kill -9, DDP,
NaN handling, schedules, EMA, accumulation, clipping, run-folder rules. CPU only, tiny models."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sciffusion.core.checkpoint import list_checkpoints, load_checkpoint
from sciffusion.core.domain import resolve_config
from sciffusion.core.io import InputError, is_temporary
from sciffusion.core.train import (EMA, AdaptiveClip, TrainingDiverged, batch_indices, ema_decay_at, load_denoiser,
                                   lr_at, example_noise, train)

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _cfg(domain, data, **train_kw):
    """A tiny, fast run: EGNN with 16 hidden units and 2 layers, batch 16, checkpoints only at the end."""
    t = {"steps": 4, "batch_size": 16, "log_every": 1, "ckpt_every": 0, "keep_last": 0, "lr": 1e-3}
    t.update(train_kw)
    return resolve_config(domain, {"data": {"path": str(data)}, "model": {"hidden": 16, "layers": 2}, "train": t})


def _log(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


def _tensors(ckpt_dir, name="model.safetensors"):
    return load_file(str(Path(ckpt_dir) / name))


def _assert_equal(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs by up to {float((a[k] - b[k]).double().abs().max())}"


class _Faulty(nn.Module):
    """Wraps a network; multiplies its output by plan[call] on the given (1-based) forward calls."""

    def __init__(self, net, plan):
        super().__init__()
        self.net = net
        self.plan = plan
        self.calls = 0

    def forward(self, x, t, cond):
        out = self.net(x, t, cond)
        self.calls += 1
        f = self.plan.get(self.calls)
        return out if f is None else out.map(lambda k, v: v * f)


def _faulty_domain(plan, nan_init=False):
    from sciffusion_points2d import PointsDomain

    class Faulty(PointsDomain):
        def build_network(self, model_cfg, data_config):
            net = super().build_network(model_cfg, data_config)
            if nan_init:
                with torch.no_grad():
                    next(net.parameters()).fill_(float("nan"))
            return _Faulty(net, plan)

    return Faulty()


# ----------------------------------------------------------------------------- pure pieces


def test_lr_schedule_warmup_then_cosine_and_linear():
    t = {"lr": 1.0, "steps": 14, "warmup_steps": 4, "decay": "cosine", "min_lr_ratio": 0.1}
    assert [lr_at(k, t) for k in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(4, t) == pytest.approx(1.0)
    assert lr_at(9, t) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lr_at(14, t) == pytest.approx(0.1)
    assert lr_at(6, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    lin = dict(t, decay="linear")
    assert lr_at(9, lin) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_at(13, lin) == pytest.approx(1 - 0.9 * 0.9)
    assert lr_at(100, dict(t, decay="none")) == 1.0


def test_lr_in_the_log_follows_the_schedule(points2d, points_data, tmp_path):
    cfg = _cfg(points2d, points_data, steps=6, warmup_steps=2, decay="cosine", min_lr_ratio=0.2)
    train(points2d, cfg, tmp_path / "run", device="cpu", progress=False)
    lrs = {r["step"]: r["lr"] for r in _log(tmp_path / "run") if "lr" in r}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    for step, lr in lrs.items():  # the record at step s reports the rate of update s
        assert lr == pytest.approx(lr_at(step - 1, cfg["train"]))
    assert lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3) and lrs[6] < lrs[3]


def test_ema_decay_formula_and_update():
    assert ema_decay_at(1, 0.999, 0) == 0.999
    assert ema_decay_at(1, 0.999, 9) == pytest.approx(0.1)  # (1 + k) / (10 + k) at k = 0
    assert ema_decay_at(91, 0.999, 9) == pytest.approx(0.91)
    assert ema_decay_at(10**6, 0.999, 9) == 0.999
    p = torch.tensor([1.0, -2.0, 4.0])
    e = torch.zeros(3)
    ema = EMA([p], [e], decay=0.9, warmup=3)
    expected = torch.zeros(3, dtype=torch.float64)
    for n in range(1, 6):
        p += 0.5
        good = torch.tensor(n != 3)  # the third update is a skipped (bad) step
        ema.update(good)
        if n != 3:
            k = n if n < 3 else n - 1  # updates actually made
            d = ema_decay_at(k, 0.9, 3)
            expected = d * expected + (1 - d) * p.double()
        assert torch.allclose(e.double(), expected, rtol=1e-6, atol=1e-7), n
    assert float(ema.updates) == 4


def test_ema_in_checkpoints_follows_the_formula(points2d, points_data, tmp_path):
    cfg = _cfg(points2d, points_data, steps=2, ckpt_every=1, ema_decay=0.9, ema_warmup=3)
    train(points2d, cfg, tmp_path / "run", device="cpu", progress=False)
    c1, c2 = [p for _, p in list_checkpoints(tmp_path / "run")]
    e1, e2, m2 = _tensors(c1, "ema.safetensors"), _tensors(c2, "ema.safetensors"), _tensors(c2)
    d2 = ema_decay_at(2, 0.9, 3)  # = 0.4
    for k in m2:
        assert torch.allclose(e2[k], d2 * e1[k] + (1 - d2) * m2[k], rtol=1e-5, atol=1e-7), k
    assert not all(torch.equal(e2[k], m2[k]) for k in m2)


def test_adaptive_clip_threshold_and_engagement():
    clip = AdaptiveClip(window=4, start=3)
    assert math.isinf(float(clip.threshold()))
    for v in (1.0, 1.2):
        clip.push(torch.tensor(v))
    assert math.isinf(float(clip.threshold()))  # not engaged before `start` good norms
    clip.push(torch.tensor(float("nan")), good=torch.tensor(False))  # bad steps do not count
    assert math.isinf(float(clip.threshold()))
    for v in (1.4, 1.6, 1.8):  # window 4: 1.2, 1.4, 1.6, 1.8 remain
        clip.push(torch.tensor(v))
    h = torch.tensor([1.2, 1.4, 1.6, 1.8], dtype=torch.float64)
    assert float(clip.threshold()) == pytest.approx(float(1.5 * h.mean() + 2 * h.std()))


def test_adaptive_clip_engages_on_a_gradient_spike(points2d, points_data, tmp_path):
    dom = _faulty_domain({12: 300.0})
    cfg = _cfg(dom, points_data, steps=14, log_every=14, adaptive_clip=True, adaptive_clip_start=5)
    res = train(dom, cfg, tmp_path / "clip", device="cpu", progress=False)
    assert res.metrics["clipped_steps"] >= 1 and res.metrics["bad_steps"] == 0
    ref = train(points2d, _cfg(points2d, points_data, steps=14, log_every=14, adaptive_clip=True,
                               adaptive_clip_start=5), tmp_path / "plain", device="cpu", progress=False)
    assert ref.metrics["clipped_steps"] == 0
    state = _tensors(res.checkpoint, "state.safetensors")
    assert int(state["extra/clip/pushed"]) == 14 and torch.isfinite(state["extra/clip/history"]).all()


def test_training_noise_depends_on_the_example_alone():
    from sciffusion.core import State, ZeroMean

    sizes = torch.tensor([3, 5, 4, 6, 2])
    index = torch.repeat_interleave(torch.arange(5), sizes)
    x = State({"pos": torch.zeros(int(sizes.sum()), 2), "h": torch.zeros(5, 3, 2)}, 5, index={"pos": index},
              spaces={"pos": ZeroMean()})
    positions = torch.tensor([100, 101, 102, 103, 104])
    z = example_noise(x, positions, key=7)
    part = x.select([1, 3])  # a DDP slice or a micro-batch holding examples 1 and 3
    zp = example_noise(part, positions[[1, 3]], key=7)
    for k in ("pos", "h"):
        assert torch.equal(zp[k], z.select([1, 3])[k]), k
    assert not torch.equal(example_noise(x, positions, key=8)["h"], z["h"])
    assert not torch.equal(example_noise(x, positions + 5, key=7)["h"], z["h"])
    assert torch.allclose(torch.zeros(5, 2), torch.zeros(5, 2).index_add(0, index, z["pos"]), atol=1e-6)  # ZeroMean
    big = example_noise(State({"x": torch.zeros(40000, 4, dtype=torch.float64)}, 40000), torch.arange(40000), 3)["x"]
    assert abs(float(big.mean())) < 0.01 and abs(float(big.var()) - 1) < 0.02 and abs(float((big**4).mean()) - 3) < 0.1
    assert float(torch.corrcoef(big.T).sub(torch.eye(4)).abs().max()) < 0.03


# ----------------------------------------------------------------------------- training


def test_batches_follow_batch_indices_and_cover_each_epoch_once(points2d_env, points_data, tmp_path):
    from sciffusion_points2d import PointsDomain

    examples = PointsDomain().load_dataset({"path": str(points_data), "valid_every": 10}, "train")
    index_of = {e["points"].tobytes(): i for i, e in enumerate(examples)}
    assert len(index_of) == len(examples) == 270
    seen = []

    class Recording(PointsDomain):
        def collate(self, examples, data_config):
            seen.append([index_of[e["points"].tobytes()] for e in examples])
            return super().collate(examples, data_config)

    dom = Recording()
    train(dom, _cfg(dom, points_data, steps=9, batch_size=64, grad_accum=2, seed=3), tmp_path / "run", device="cpu",
          progress=False)
    assert len(seen) == 18 and all(len(m) == 32 for m in seen)  # two micro-batches per step
    flat = [i for micro in seen for i in micro]
    assert flat == [int(i) for k in range(9) for i in batch_indices(k, seed=3, batch_size=64, n_examples=270)]
    assert sorted(flat[:270]) == list(range(270)) and sorted(flat[270:540]) == list(range(270))  # epochs
    assert flat[:270] != flat[270:540]  # a new permutation every epoch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loss_decreases(points2d, points_data, tmp_path):
    """(eps-prediction: its loss has no large irreducible part, unlike the plugin's default v-loss)"""
    cfg = _cfg(points2d, points_data, steps=150, batch_size=32, log_every=25, val_every=150, val_batches=1,
               lr=3e-3, warmup_steps=10, decay="cosine", ema_decay=0.95)
    cfg = resolve_config(points2d, cfg, ["objective.prediction='eps'"])
    res = train(points2d, cfg, tmp_path / "run", device="cpu", progress=False)
    log = _log(tmp_path / "run")
    val = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 150]
    assert val[1]["val_loss"] < 0.75 * val[0]["val_loss"], val
    assert val[1]["val_loss_ema"] < 0.75 * val[0]["val_loss_ema"], val
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    assert res.step == 150 and res.metrics["val_loss"] == val[1]["val_loss"]
    assert load_checkpoint(res.checkpoint).meta["metrics"]["val_loss"] == val[1]["val_loss"]


def test_gradient_accumulation_equals_one_big_batch(points2d, points_data, tmp_path):
    a = train(points2d, _cfg(points2d, points_data, steps=3, batch_size=32, grad_accum=1), tmp_path / "a",
              device="cpu", progress=False)
    b = train(points2d, _cfg(points2d, points_data, steps=3, batch_size=32, grad_accum=2), tmp_path / "b",
              device="cpu", progress=False)
    wa, wb = _tensors(a.checkpoint), _tensors(b.checkpoint)
    w0 = _tensors(train(points2d, _cfg(points2d, points_data, steps=0), tmp_path / "init", device="cpu",
                        progress=False).checkpoint)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=2e-6, rtol=1e-5), k
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)  # it did train


def test_data_workers_change_nothing(points2d, points_data, tmp_path):
    a = train(points2d, _cfg(points2d, points_data, steps=3, grad_accum=2), tmp_path / "a", device="cpu",
              progress=False)
    b = train(points2d, _cfg(points2d, points_data, steps=3, grad_accum=2, num_workers=2), tmp_path / "b",
              device="cpu", progress=False)
    _assert_equal(_tensors(a.checkpoint), _tensors(b.checkpoint), "num_workers=2 vs 0")


def test_in_process_resume_is_exact_and_steps_may_be_raised(points2d, points_data, tmp_path):
    kw = dict(adaptive_clip=True, adaptive_clip_start=2, grad_clip=0.5, warmup_steps=2, ema_warmup=3)
    straight = train(points2d, _cfg(points2d, points_data, steps=6, **kw), tmp_path / "a", device="cpu",
                     progress=False)
    run = tmp_path / "b"
    first = train(points2d, _cfg(points2d, points_data, steps=3, **kw), run, device="cpu", progress=False)
    assert first.step == 3
    again = train(points2d, _cfg(points2d, points_data, steps=3, **kw), run, device="cpu", progress=False)
    assert again.step == 3 and again.checkpoint == first.checkpoint  # nothing left to do
    resumed = train(points2d, _cfg(points2d, points_data, steps=6, **kw, log_every=2), run, device="cpu",
                    progress=False)
    assert resumed.step == 6
    for name in ("model.safetensors", "ema.safetensors"):
        _assert_equal(_tensors(straight.checkpoint, name), _tensors(resumed.checkpoint, name), name)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
    events = [r["event"] for r in _log(run) if "event" in r]
    assert events == ["start", "resume"]


def _write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


_SLOW_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from sciffusion_points2d import PointsDomain
from sciffusion.core.train import train

class Slow(PointsDomain):  # a slow data pipeline, so that the kill lands mid-run
    def collate(self, examples, data_config):
        time.sleep(0.03)
        return super().collate(examples, data_config)

train(Slow(), json.loads(sys.argv[1]), sys.argv[2], device="cpu", progress=False)
"""


def test_kill_9_and_resume_is_bitwise_identical(points2d, points2d_env, points_data, tmp_path):
    cfg = _cfg(points2d, points_data, steps=24, ckpt_every=4, keep_last=2, log_every=2, val_every=8,
               val_batches=1, warmup_steps=3, decay="cosine", min_lr_ratio=0.1, adaptive_clip=True,
               adaptive_clip_start=3, grad_clip=0.5, ema_warmup=5, grad_accum=2)
    cfg["objective"]["condition_dropout"] = 0.3
    script = _write_script(tmp_path / "slow.py", _SLOW_SCRIPT)
    env = points2d_env

    # the uninterrupted reference runs here (the slow pipeline only sleeps: same batches, same numbers)
    train(points2d, cfg, tmp_path / "straight", device="cpu", progress=False)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg), str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = killed / "checkpoints" / "step-00000012"
    deadline = time.monotonic() + 90
    while not target.is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the step-12 checkpoint never appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    proc.stderr.close()
    steps_at_kill = [s for s, _ in list_checkpoints(killed)]
    assert 24 not in steps_at_kill and 12 in steps_at_kill

    r = subprocess.run([sys.executable, str(script), json.dumps(cfg), str(killed)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a = tmp_path / "straight" / "checkpoints" / "step-00000024"
    b = killed / "checkpoints" / "step-00000024"
    for name in ("model.safetensors", "ema.safetensors", "state.safetensors"):
        _assert_equal(_tensors(a, name), _tensors(b, name), name)
    assert [s for s, _ in list_checkpoints(killed)] == [20, 24]  # keep_last
    assert not [p for p in killed.rglob(".*") if is_temporary(p)]  # nothing half-written is left
    # the resumed log has every record exactly once, with the same values
    la, lb = _log(tmp_path / "straight"), _log(killed)
    key = lambda log: [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("val_loss")) for r in log  # noqa: E731
                       if "loss" in r or "val_loss" in r]
    assert key(la) == key(lb)
    assert [r["event"] for r in lb if "event" in r] == ["start", "resume"]


_DDP_SCRIPT = """
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from sciffusion.core.train import train

res = train("points2d", json.loads(sys.argv[1]), sys.argv[2], device="cpu", progress=False)
Path(sys.argv[3], "rank-" + os.environ["RANK"]).write_text(f"{res.step} {res.checkpoint.name}")
"""


def test_ddp_two_processes_equal_one_process(points2d, points2d_env, points_data, tmp_path):
    cfg = _cfg(points2d, points_data, steps=4, batch_size=16, grad_accum=2, ckpt_every=2, log_every=2)
    script = _write_script(tmp_path / "ddp.py", _DDP_SCRIPT)
    r = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--standalone", str(script), json.dumps(cfg),
                        str(tmp_path / "ddp"), str(tmp_path)], env=points2d_env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for rank in (0, 1):  # both ranks finished and agree on the result
        assert (tmp_path / f"rank-{rank}").read_text() == "4 step-00000004"
    single_cfg = dict(cfg, train=dict(cfg["train"], grad_accum=1))
    single = train(points2d, single_cfg, tmp_path / "single", device="cpu", progress=False)
    ddp_ckpt = tmp_path / "ddp" / "checkpoints" / "step-00000004"
    assert load_checkpoint(ddp_ckpt).meta["train"]["world_size"] == 2
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _tensors(single.checkpoint, name), _tensors(ddp_ckpt, name)
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (name, k, float((a[k] - b[k]).abs().max()))
    log = _log(tmp_path / "ddp")
    assert [r["step"] for r in log if "loss" in r] == [2, 4]  # one writer


# ----------------------------------------------------------------------------- non-finite steps


def test_a_nan_step_is_skipped(points2d_env, points_data, tmp_path):
    run = tmp_path / "run"
    dom = _faulty_domain({3: float("nan")})
    train(dom, _cfg(dom, points_data, steps=3, ckpt_every=1), run, device="cpu", progress=False)
    c = {s: p for s, p in list_checkpoints(run)}
    assert sorted(c) == [1, 2, 3]  # the last step is always saved (its weights are those of step 2)
    for name in ("model.safetensors", "ema.safetensors"):
        _assert_equal(_tensors(c[2], name), _tensors(c[3], name), f"bad step 3 changed {name}")
    s2, s3 = _tensors(c[2], "state.safetensors"), _tensors(c[3], "state.safetensors")
    steps = [k for k in s2 if k.startswith("optimizer/") and k.endswith("/step")]
    assert steps and all(torch.equal(s2[k], s3[k]) for k in steps)  # AdamW's step count did not move
    assert int(s3["extra/bad/total"]) == 1 and int(s3["extra/bad/run"]) == 1
    # training goes on after a bad step: resume with healthy batches (and a checkpoint cadence that a
    # bad run would skip)
    res = train(_faulty_domain({}), _cfg(dom, points_data, steps=5, ckpt_every=1), run, device="cpu",
                progress=False)
    assert res.step == 5 and res.metrics["bad_steps"] == 1
    assert not torch.equal(_tensors(c[3])["net.inp.weight"], _tensors(res.checkpoint)["net.inp.weight"])
    log = [r for r in _log(run) if "loss" in r]
    assert [r["bad_steps"] for r in log] == [0, 0, 1, 1, 1]
    assert [r["loss"] is None for r in log] == [False, False, True, False, False]


def test_no_checkpoint_inside_a_run_of_bad_steps(points2d_env, points_data, tmp_path):
    dom = _faulty_domain({2: float("nan"), 3: float("nan")})
    train(dom, _cfg(dom, points_data, steps=5, ckpt_every=1), tmp_path / "run", device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 4, 5]
    skipped = [r["step"] for r in _log(tmp_path / "run") if r.get("event") == "checkpoint_skipped"]
    assert skipped == [2, 3]


def test_consecutive_nan_steps_stop_with_the_last_good_checkpoint(points2d_env, points_data, tmp_path):
    dom = _faulty_domain({k: float("nan") for k in range(7, 100)})
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        train(dom, _cfg(dom, points_data, steps=30, ckpt_every=2, max_bad_steps=3), run, device="cpu",
              progress=False)
    msg = str(e.value)
    assert "3 consecutive" in msg and "at step 9" in msg and "step-00000006" in msg and str(run) in msg, msg
    assert isinstance(e.value, InputError)
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6]
    den, ckpt = load_denoiser(run, _faulty_domain({}))
    assert ckpt.step == 6 and all(torch.isfinite(p).all() for p in den.parameters())
    assert _log(run)[-1]["event"] == "diverged"


def test_non_finite_weights_are_never_checkpointed(points2d_env, points_data, tmp_path):
    dom = _faulty_domain({}, nan_init=True)
    with pytest.raises(TrainingDiverged, match="weights became non-finite; no checkpoint was saved"):
        train(dom, _cfg(dom, points_data, steps=2, ckpt_every=1, max_bad_steps=0), tmp_path / "run",
              device="cpu", progress=False)
    assert list_checkpoints(tmp_path / "run") == []


# ----------------------------------------------------------------------------- run folder


def test_checkpoints_record_the_plugin_that_made_them(points2d, points_data, tmp_path):
    res = train(points2d, _cfg(points2d, points_data, steps=1), tmp_path / "run", device="cpu", progress=False)
    plugin = load_checkpoint(res.checkpoint).meta["plugin"]
    assert plugin["distribution"] == "sciffusion-points2d" and plugin["entry_point"].endswith(":PointsDomain")


def test_keep_last_checkpoints(points2d, points_data, tmp_path):
    train(points2d, _cfg(points2d, points_data, steps=5, ckpt_every=1, keep_last=2), tmp_path / "run",
          device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4, 5]
    meta = load_checkpoint(tmp_path / "run").meta
    assert meta["domain"] == "points2d" and meta["step"] == 5 and meta["data_config"]["label_counts"]
    assert meta["config"]["train"]["keep_last"] == 2 and "loss" in meta["metrics"]


def test_resume_with_a_changed_config_is_refused(points2d, points_data, tmp_path):
    run = tmp_path / "run"
    train(points2d, _cfg(points2d, points_data, steps=2), run, device="cpu", progress=False)
    changed = _cfg(points2d, points_data, steps=4, lr=2e-3)
    changed["model"]["hidden"] = 32
    with pytest.raises(InputError) as e:
        train(points2d, changed, run, device="cpu", progress=False)
    msg = str(e.value)
    assert str(run) in msg and "train.lr" in msg and "model.hidden" in msg and "train.steps:" not in msg, msg
    with pytest.raises(InputError, match="already holds a training run"):
        train(points2d, _cfg(points2d, points_data, steps=4), run, device="cpu", resume=False, progress=False)
    # steps, cadence and the sampling defaults may change
    resumed = _cfg(points2d, points_data, steps=4, log_every=2, ckpt_every=1, keep_last=3)
    resumed["sample"] = {**resumed.get("sample", {}), "sampler": "ddpm", "steps": 7}
    res = train(points2d, resumed, run, device="cpu", progress=False)
    assert res.step == 4
    stored = json.loads((run / "config.json").read_text())["sample"]
    assert stored["sampler"] == "ddpm" and stored["steps"] == 7


def test_bad_input_is_a_clear_error(points2d, points2d_env, points_data, tmp_path):
    from sciffusion_points2d import PointsDomain

    class Empty(PointsDomain):
        def load_dataset(self, data_cfg, split):
            return []

    with pytest.raises(InputError, match="training split is empty"):
        train(Empty(), _cfg(points2d, points_data), tmp_path / "empty", device="cpu", progress=False)
    assert not (tmp_path / "empty").exists()  # nothing half-written
    with pytest.raises(InputError, match=r"batch_size=500 is larger than the training set \(270 examples"):
        train(points2d, _cfg(points2d, points_data, batch_size=500), tmp_path / "big", device="cpu", progress=False)
    with pytest.raises(InputError, match="train.decay"):
        train(points2d, _cfg(points2d, points_data, decay="exp"), tmp_path / "x", device="cpu", progress=False)
    with pytest.raises(InputError, match="grad_accum=32 exceeds"):
        train(points2d, _cfg(points2d, points_data, grad_accum=32), tmp_path / "x", device="cpu", progress=False)
    with pytest.raises(InputError, match="train.lr"):
        train(points2d, _cfg(points2d, points_data, lr=-1.0), tmp_path / "x", device="cpu", progress=False)
    with pytest.raises(InputError, match="condition_dropout"):
        cfg = _cfg(points2d, points_data)
        cfg["objective"]["condition_dropout"] = 1.5
        train(points2d, cfg, tmp_path / "x", device="cpu", progress=False)
    assert not (tmp_path / "x").exists()


def test_sample_metrics_are_logged_and_checkpointed(points2d, points_data, tmp_path):
    cfg = _cfg(points2d, points_data, steps=2, sample_every=2, sample_n=6)
    cfg["sample"].update({"steps": 4, "guidance": 1.0, "batch_size": 4})
    res = train(points2d, cfg, tmp_path / "run", device="cpu", progress=False)
    from dataclasses import replace

    from sciffusion.core.sampling import SampleSpec, generate_batch  # the logged figures are those of the EMA
    den_ema, ckpt = load_denoiser(res.checkpoint)  # sampled again through the one sampling path, seeds 0..5
    spec = SampleSpec.from_config(cfg["sample"], den_ema.process)
    with torch.no_grad():
        made = [generate_batch(points2d, den_ema, s, cfg, ckpt.data_config, spec) for s in ([0, 1, 2, 3], [4, 5])]
        plain = generate_batch(points2d, den_ema, [0], cfg, ckpt.data_config, replace(spec, guidance=0.0))
    again = points2d.metrics([o for b in made for o in points2d.decode(b.x0, b.cond, ckpt.data_config)], ckpt.data_config)
    assert {k: v for k, v in res.metrics.items() if k.startswith("sample/")} == pytest.approx(
        {**{f"sample/{k}": v for k, v in again.items()}, "sample/network_calls": made[0].network_calls})
    assert res.metrics["sample/n"] == 6.0 and res.metrics["sample/network_calls"] == 2 * plain.network_calls  # guided
    assert load_checkpoint(res.checkpoint).meta["metrics"]["sample/n"] == 6.0
    assert any("sample/shape_error" in r for r in _log(tmp_path / "run"))
    den, _ = load_denoiser(tmp_path / "run")
    ema = _tensors(res.checkpoint, "ema.safetensors")
    _assert_equal({k: v for k, v in den.network.state_dict().items()}, ema, "load_denoiser uses the EMA")


@pytest.mark.slow
def test_ddp_resume_loads_the_same_checkpoint_on_every_rank(points2d, points2d_env, points_data, tmp_path):
    script = _write_script(tmp_path / "ddp.py", _DDP_SCRIPT)

    def torchrun(cfg, out):
        r = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--standalone", str(script), json.dumps(cfg), str(out),
                            str(tmp_path)], env=points2d_env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    cfg = _cfg(points2d, points_data, steps=4, batch_size=16, ckpt_every=2, adaptive_clip=True, adaptive_clip_start=2,
               warmup_steps=2, decay="cosine")
    torchrun(cfg, tmp_path / "straight")
    torchrun(dict(cfg, train=dict(cfg["train"], steps=2)), tmp_path / "resumed")  # (still in the warm-up)
    torchrun(cfg, tmp_path / "resumed")
    a = tmp_path / "straight" / "checkpoints" / "step-00000004"
    b = tmp_path / "resumed" / "checkpoints" / "step-00000004"
    for name in ("model.safetensors", "ema.safetensors"):
        _assert_equal(_tensors(a, name), _tensors(b, name), name)
    assert [r["event"] for r in _log(tmp_path / "resumed") if "event" in r] == ["start", "resume"]


def test_read_log_skips_a_torn_line_and_takes_the_folder_or_the_file(tmp_path):
    from sciffusion.core.train import read_log

    (tmp_path / "log.jsonl").write_text('{"step": 0, "event": "start"}\n{"step": 10, "loss": 0.5}\n{"step": 20, "lo')
    assert read_log(tmp_path) == read_log(tmp_path / "log.jsonl") == [{"step": 0, "event": "start"},
                                                                    {"step": 10, "loss": 0.5}]
    assert read_log(tmp_path / "elsewhere") == []


def test_a_time_budget_ends_the_run_with_a_checkpoint(points2d, points_data, tmp_path):
    """train.max_minutes stops at the first step past the budget, checkpoints it and logs why; the
    run resumes from there like any other."""
    cfg = _cfg(points2d, points_data, steps=100000, max_minutes=0.01, log_every=0, ckpt_every=0)
    res = train(points2d, cfg, tmp_path / "run", device="cpu", progress=False)
    assert 0 < res.step < 100000
    events = [r for r in _log(tmp_path / "run") if r.get("event") == "time_budget"]
    assert events == [{"step": res.step, "event": "time_budget", "minutes": 0.01}]
    assert res.checkpoint.name == f"step-{res.step:08d}"
    more = train(points2d, resolve_config(points2d, cfg, ["train.max_minutes=0", f"train.steps={res.step + 2}"]),
                 tmp_path / "run", device="cpu", progress=False)
    assert more.step == res.step + 2


def test_torn_checkpoint_folders_are_cleaned_and_files_get_normal_permissions(points2d, points_data, tmp_path):
    """A step folder left without checkpoint.json (a pruner killed midway, as older versions did it)
    and a stale temporary are removed when the run resumes; checkpoint files are written with the
    same umask-respecting mode as every other output (safetensors used to be 0600)."""
    import os

    run = tmp_path / "run"
    res = train(points2d, _cfg(points2d, points_data, steps=2, ckpt_every=1, keep_last=2), run, device="cpu",
                progress=False)
    ckdir = run / "checkpoints"
    torn = ckdir / "step-00000001"
    (torn / "checkpoint.json").unlink()
    (ckdir / ".step-00000009.123.tmp").mkdir()
    train(points2d, _cfg(points2d, points_data, steps=3, ckpt_every=1, keep_last=2), run, device="cpu", progress=False)
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-00000002", "step-00000003"]
    mask = os.umask(0)
    os.umask(mask)
    for f in (res.checkpoint / "model.safetensors", res.checkpoint / "checkpoint.json"):
        assert (f.stat().st_mode & 0o777) == (0o666 & ~mask), f


# ----------------------------------------------------------------------------- several nodes, simulated


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(script, cfg, out, tmp_path, rank: int, port: int, env):
    """One simulated node: torchrun with the standard multi-node rendezvous on 127.0.0.1, 1 process."""
    return subprocess.Popen([str(TORCHRUN), "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
                             "--master_addr=127.0.0.1", f"--master_port={port}", str(script), json.dumps(cfg), str(out),
                             str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_simulated_nodes_train_like_one_process(points2d, points2d_env, points_data, tmp_path):
    """torchrun --nnodes 2 --node_rank 0/1 --master_addr 127.0.0.1 (gloo on the CPU), one process per
    node, both writing to one shared folder: the weights equal a single process's to float tolerance."""
    cfg = _cfg(points2d, points_data, steps=4, batch_size=16, ckpt_every=2, log_every=2)
    script = _write_script(tmp_path / "ddp.py", _DDP_SCRIPT)
    port = _free_port()
    nodes = [_node(script, cfg, tmp_path / "nodes", tmp_path, r, port, points2d_env) for r in (0, 1)]
    for p in nodes:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:] + err[-2000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank-{rank}").read_text() == "4 step-00000004"
    ckpt = tmp_path / "nodes" / "checkpoints" / "step-00000004"
    assert load_checkpoint(ckpt).meta["train"]["world_size"] == 2
    single = train(points2d, cfg, tmp_path / "single", device="cpu", progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _tensors(single.checkpoint, name), _tensors(ckpt, name)
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (name, k, float((a[k] - b[k]).abs().max()))


def _cli_node(cfg_file, out, rank: int, port: int, env, log, *overrides):
    """One simulated node running the CLI under torchrun, in its own session (the node's processes)."""
    return subprocess.Popen([str(TORCHRUN), "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
                             "--master_addr=127.0.0.1", f"--master_port={port}", "--no-python",
                             str(Path(sys.executable).with_name("sciffusion")), "train", "points2d", "-c", str(cfg_file),
                             "--out", str(out), "--device", "cpu", "--no-progress", *overrides],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_node(p: subprocess.Popen) -> None:
    """kill -9 of a whole simulated node: its torchrun agent and every process under it."""
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    os.killpg(p.pid, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(k), signal.SIGKILL)
    p.wait(30)


@pytest.mark.parametrize("victim", [1, 0], ids=["worker-node", "master-node"])
def test_a_killed_node_stops_the_others_cleanly_and_the_rerun_resumes(points2d, points2d_env, points_data, tmp_path,
                                                                        victim):
    """kill -9 of one of two simulated nodes (the rendezvous host or the other): the survivor stops
    within seconds with one clear line (which rank, after which step, the last complete checkpoint),
    exit code 1, and logs the event; the same command on both nodes resumes from that checkpoint and
    ends with the weights of an uninterrupted single-process run (float tolerance)."""
    from sciffusion.core.checkpoint import latest_checkpoint
    from sciffusion.core.config import dump_toml

    cfg = _cfg(points2d, points_data, steps=100000, batch_size=16, ckpt_every=10, log_every=10)
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(dump_toml(cfg))
    run, port = tmp_path / "run", _free_port()
    logs = [open(tmp_path / f"node{r}.log", "w") for r in (0, 1)]
    nodes = [_cli_node(cfg_file, run, r, port, points2d_env, logs[r]) for r in (0, 1)]
    try:
        t = time.monotonic()
        while latest_checkpoint(run) is None:
            assert time.monotonic() - t < 240 and all(p.poll() is None for p in nodes), "no checkpoint came"
            time.sleep(0.2)
        _kill_node(nodes[victim])
        survivor = nodes[1 - victim]
        t = time.monotonic()
        assert survivor.wait(60) == 1
        assert time.monotonic() - t < 30
    finally:
        for p in nodes:
            if p.poll() is None:
                _kill_node(p)
    text = (tmp_path / f"node{1 - victim}.log").read_text()
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text[-3000:]
    last = latest_checkpoint(run)
    assert f"rank {1 - victim} of 2 lost contact with the other ranks after step" in errors[0]
    assert f"the last complete checkpoint is {last}" in errors[0]
    assert "Traceback" not in text.split("error: ")[0]  # the worker's own output: one line, no traceback
    if victim == 1:  # rank 0 survives and writes the event
        assert [r for r in _log(run) if r.get("event") == "peer_lost"][0]["rank"] == 0
    # the same command again on both nodes (more steps: a few past the checkpoint) resumes and finishes
    k = load_checkpoint(last).step
    port = _free_port()
    for f in logs:
        f.close()
    logs = [open(tmp_path / f"rerun{r}.log", "w") for r in (0, 1)]
    nodes = [_cli_node(cfg_file, run, r, port, points2d_env, logs[r], f"train.steps={k + 4}") for r in (0, 1)]
    for p in nodes:
        assert p.wait(240) == 0, (tmp_path / "rerun0.log").read_text()[-3000:]
    events = [(r["event"], r["step"]) for r in _log(run) if "event" in r]
    # the log is cut back to the checkpoint's step; a node lost just after it keeps its event
    assert events in ([("start", 0), ("resume", k)], [("start", 0), ("peer_lost", k), ("resume", k)])
    single = train(points2d, dict(cfg, train=dict(cfg["train"], steps=k + 4)), tmp_path / "single", device="cpu",
                   progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _tensors(single.checkpoint, name), _tensors(latest_checkpoint(run), name)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), (name, key)


def test_the_training_pictures_are_drawn_at_every_checkpoint_from_the_log(points2d, points_data, tmp_path):
    """loss.png (training and validation loss, learning rate) and sample_metrics.png appear in the
    run folder at the first checkpoint and are drawn again, with the new points, at the next one."""
    from PIL import Image

    cfg = _cfg(points2d, points_data, steps=4, ckpt_every=2, log_every=1, val_every=2, sample_every=2, sample_n=4)
    cfg["sample"].update({"steps": 2, "batch_size": 4})
    run = tmp_path / "run"
    train(points2d, cfg, run, device="cpu", progress=False)
    first = {n: (run / n).read_bytes() for n in ("loss.png", "sample_metrics.png")}
    train(points2d, dict(cfg, train=dict(cfg["train"], steps=6)), run, device="cpu", progress=False)
    for name, before in first.items():
        after = (run / name).read_bytes()
        assert after != before, name
        img = Image.open(run / name)
        assert img.size[0] >= 640 and len(np.unique(np.asarray(img.convert("L")))) > 10, name


def test_only_a_gone_peer_counts_as_a_lost_node():
    """lost_peer: the transport's own texts for a closed connection (as gloo raised them in the
    killed-node test above) and torch's network/backend errors; not another rank's relayed error,
    nor an unrelated gloo or timeout error, nor a user's bad input."""
    import torch.distributed as dist

    from sciffusion.core.distributed import lost_peer

    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
            "[127.0.0.1]:53923: Connection reset by peer. This is typically caused by a remote worker hanging")
    assert lost_peer(RuntimeError(gloo))
    assert lost_peer(dist.DistBackendError("NCCL error: remote process exited or there was a network error"))
    assert not lost_peer(RuntimeError("ProcessGroupGloo::allreduce: invalid tensor type"))
    assert not lost_peer(RuntimeError("rank 0 failed: URLError: <urlopen error timed out>"))
    assert not lost_peer(RuntimeError("rank 1 failed: RuntimeError: Connection reset by peer"))
    assert not lost_peer(InputError("data.csv: Connection reset by peer"))
    assert not lost_peer(ValueError("connection reset by peer"))
