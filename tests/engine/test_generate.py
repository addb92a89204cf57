"""Batch generation (sciffusion.core.generate): files and manifest, batch-size independence,
kill -9 and resume, two processes under torchrun, errors, guidance and overrides.

Checkpoints are made without training: the points2d plugin's denoiser with a tiny network and
random weights (machinery tests; quality is measured elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sciffusion.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sciffusion.core.domain import resolve_config
from sciffusion.core.generate import FORMAT, parse_seeds, sample, shard_seeds
from sciffusion.core.io import InputError, is_temporary

TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = ["model.hidden=16", "model.layers=2", "sample.steps=5", "sample.shard_size=10"]


def make_checkpoint(domain, data, folder: Path, overrides=(), meta_overrides=None, seed: int = 0) -> Path:
    cfg = resolve_config(domain, overrides=[f"data.path='{data}'", *TINY, *overrides])
    data_config = domain.data_config(domain.load_dataset(cfg["data"], "train"), cfg)
    torch.manual_seed(seed)
    net = domain.build_denoiser(cfg, data_config).network  # checkpoints hold the bare network, as the trainer writes them
    meta_cfg = resolve_config(domain, cfg, meta_overrides or [])
    save_checkpoint(folder, model=net.state_dict(), ema=net.state_dict(),
                    meta={"domain": "points2d", "step": 0, "config": meta_cfg, "data_config": data_config})
    return folder


@pytest.fixture(scope="module")
def ckpt(points2d, points_data, tmp_path_factory) -> Path:
    return make_checkpoint(points2d, points_data, tmp_path_factory.mktemp("gen-ckpt") / "model")


@pytest.fixture(scope="module")
def reference40(ckpt, tmp_path_factory) -> Path:
    """40 samples generated in one go (batch 40)."""
    out = tmp_path_factory.mktemp("gen-ref") / "out"
    sample(ckpt, out, n=40, batch_size=40, progress=False)
    return out


def sample_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if is_temporary(p)]


# ----------------------------------------------------------------------------- files and manifest


def test_files_and_manifest(ckpt, reference40):
    out = reference40
    files = sorted(out.glob("*.csv"))
    assert len(files) == 40
    rows = manifest(out)
    assert [r["seed"] for r in rows] == list(range(40))
    assert len({r["file"] for r in rows}) == 40
    for r in rows:
        assert (out / r["file"]).is_file()
        assert r["file"] == f"{r['seed']:08d}.csv"
        assert r["domain"] == "points2d" and r["sampler"] == "dpmpp_2m" and r["steps"] == 5 and r["guidance"] == 0.0
        assert r["shard"] == r["seed"] // 10
    ck = load_checkpoint(ckpt)
    assert {r["checkpoint_hash"] for r in rows} == {ck.hash}
    assert len({r["config_hash"] for r in rows}) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["format"] == FORMAT and run["status"] == "complete"
    assert run["checkpoint_hash"] == ck.hash and run["config_hash"] == rows[0]["config_hash"]
    assert run["files"] == 40 and run["generated"] == 40 and run["skipped"] == 0
    assert run["config"]["sample"]["steps"] == 5
    assert sorted(p.name for p in (out / ".parts").iterdir()) == [f"shard-{k:06d}.jsonl" for k in range(4)]
    assert not temporaries(out)
    # the written clouds are real: finite points, one per line after the header
    for f in files[:5]:
        lines = f.read_text().splitlines()
        assert lines[0].startswith("# label=") and lines[1] == "x,y"
        assert 3 <= len(lines) - 2 <= 6
        assert all(abs(float(v)) < 1e3 for ln in lines[2:] for v in ln.split(","))


def test_rerun_skips_and_batch_size_does_not_change_the_hash(ckpt, reference40, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference40, out)
    before = sample_files(out)
    r = sample(ckpt, out, n=40, batch_size=3, progress=False)  # another batch size may resume the folder
    assert (r.generated, r.skipped, r.files) == (0, 40, 40)
    assert sample_files(out) == before
    assert manifest(out) == manifest(reference40)


def read_points(files: dict[str, bytes]) -> dict[str, tuple[str, torch.Tensor]]:
    out = {}
    for name, data in files.items():
        lines = data.decode().splitlines()
        out[name] = (lines[0], torch.tensor([[float(v) for v in ln.split(",")] for ln in lines[2:]], dtype=torch.float64))
    return out


def test_batch_size_independence_float64_is_byte_identical(ckpt, tmp_path):
    """In float64 the batch size changes no bit: batch 7 and batch 40 write byte-identical files."""
    f64 = ["sample.dtype='float64'"]
    sample(ckpt, tmp_path / "b40", n=40, batch_size=40, overrides=f64, progress=False)
    r = sample(ckpt, tmp_path / "b7", n=40, batch_size=7, overrides=f64, progress=False)
    assert r.generated == 40 and r.files == 40
    ref, got = sample_files(tmp_path / "b40"), sample_files(tmp_path / "b7")
    assert len(got) == 40 and got.keys() == ref.keys()
    assert got == ref
    assert manifest(tmp_path / "b7") == manifest(tmp_path / "b40")


def test_batch_size_independence_float32(ckpt, reference40, tmp_path):
    """In float32 (the default) PyTorch's CPU kernels round a tensor's tail differently from its body,
    so another batch size moves values by float32 round-off, never by a different noise draw."""
    r = sample(ckpt, tmp_path / "b7", n=40, batch_size=7, progress=False)
    assert r.generated == 40 and r.files == 40
    ref, got = read_points(sample_files(reference40)), read_points(sample_files(tmp_path / "b7"))
    assert got.keys() == ref.keys()
    for name in ref:
        (label_a, a), (label_b, b) = ref[name], got[name]
        assert label_a == label_b and a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    unchecked = [{k: v for k, v in r.items() if k != "checks"} for r in manifest(tmp_path / "b7")]
    assert unchecked == [{k: v for k, v in r.items() if k != "checks"} for r in manifest(reference40)]  # the config hash ignores the batch size


def test_a_sample_depends_on_its_seed_alone(ckpt, tmp_path):
    """Seeds 35..39 as a list in another order, in other shards and batches: the same files (in
    float64, where no kernel's round-off depends on the batch; float32 agrees to round-off, above)."""
    f64 = ["sample.dtype='float64'"]
    sample(ckpt, tmp_path / "all", n=40, batch_size=40, overrides=f64, progress=False)
    out = tmp_path / "some"
    sample(ckpt, out, seeds=[39, 35, 37, 36, 38], batch_size=2, overrides=["sample.shard_size=3", *f64], progress=False)
    ref = sample_files(tmp_path / "all")
    got = sample_files(out)
    assert sorted(got) == [f"{s:08d}.csv" for s in range(35, 40)]
    assert all(got[k] == ref[k] for k in got)
    assert [r["seed"] for r in manifest(out)] == [39, 35, 37, 36, 38]  # seed-list order
    assert [r["shard"] for r in manifest(out)] == [0, 0, 0, 1, 1]


def test_extending_the_seed_list_reuses_complete_shards(ckpt, reference40, tmp_path):
    out = tmp_path / "grow"
    sample(ckpt, out, n=20, progress=False)
    r = sample(ckpt, out, n=40, progress=False)
    assert (r.generated, r.skipped, r.files) == (20, 20, 40)
    assert sample_files(out) == sample_files(reference40)
    assert manifest(out) == manifest(reference40)


def test_overwrite_clears_what_an_earlier_run_wrote(ckpt, tmp_path):
    out = tmp_path / "ow"
    sample(ckpt, out, n=12, progress=False)
    (out / "notes.txt").write_text("mine")
    r = sample(ckpt, out, n=5, overwrite=True, overrides=["sample.steps=3"], progress=False)
    assert r.generated == 5
    assert sorted(p.name for p in out.glob("*.csv")) == [f"{s:08d}.csv" for s in range(5)]
    assert (out / "notes.txt").read_text() == "mine"  # files it did not write are left alone
    assert [row["steps"] for row in manifest(out)] == [3] * 5


# ----------------------------------------------------------------------------- kill -9 and resume


def test_kill_and_resume(ckpt, points2d_env, tmp_path):
    n, args = 300, dict(batch_size=5, overrides=["sample.shard_size=10", "sample.steps=40"])
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        from sciffusion.core.generate import sample
        sample(sys.argv[1], sys.argv[2], n={n}, batch_size={args['batch_size']}, overrides={args['overrides']!r},
               progress=False)
    """))
    out = tmp_path / "killed"
    cmd = [sys.executable, str(script), str(ckpt), str(out)]
    proc = subprocess.Popen(cmd, env=points2d_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = out / ".parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("shard-*.jsonl"))) >= 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("shard-*.jsonl")))
    assert 3 <= done < n // 10
    assert not (out / "manifest.jsonl").exists()  # no manifest until every shard is complete
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    rerun = subprocess.run(cmd, env=points2d_env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    files = sorted(out.glob("*.csv"))
    assert len(files) == n
    rows = manifest(out)
    assert len(rows) == n and [r["seed"] for r in rows] == list(range(n))
    assert not temporaries(out)
    assert len(list(parts.glob("shard-*.jsonl"))) == n // 10
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["skipped"] == 10 * done and run["generated"] == n - 10 * done

    ref = tmp_path / "uninterrupted"
    sample(ckpt, ref, n=n, progress=False, **args)
    assert sample_files(out) == sample_files(ref)
    assert manifest(out) == manifest(ref)


def test_stale_temporaries_are_removed_on_resume(ckpt, reference40, tmp_path):
    out = tmp_path / "stale"
    shutil.copytree(reference40, out)
    (out / ".parts" / "shard-000002.jsonl").unlink()  # shard 2 incomplete
    (out / "manifest.jsonl").unlink()
    (out / ".00000021.csv.abcd.tmp.csv").write_text("half")
    (out / ".parts" / ".shard-000002.jsonl.x.tmp").write_text("half")
    (out / "00000025.csv").write_text("half-written by hand")
    r = sample(ckpt, out, n=40, progress=False)
    assert (r.generated, r.skipped) == (10, 30)
    assert not temporaries(out)
    assert sample_files(out) == sample_files(reference40)
    assert manifest(out) == manifest(reference40)


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_two_processes_match_one(ckpt, points2d_env, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch
        torch.set_num_threads(1)
        from sciffusion.core.generate import sample
        r = sample(sys.argv[1], sys.argv[2], n=40, batch_size=4, device="cpu", progress=False)
        print(f"rank {os.environ['RANK']} generated {r.generated} skipped {r.skipped} files {r.files}", flush=True)
    """))
    out = tmp_path / "ddp"
    env = dict(points2d_env, OMP_NUM_THREADS="1")
    res = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--standalone", str(script), str(ckpt), str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rank 0 generated 40 skipped 0 files 40" in res.stdout
    assert "rank 1 generated 40 skipped 0 files 40" in res.stdout
    one = tmp_path / "one"
    sample(ckpt, one, n=40, batch_size=4, device="cpu", progress=False)
    assert len(sample_files(out)) == 40
    assert sample_files(out) == sample_files(one)
    assert manifest(out) == manifest(one)
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert not temporaries(out)


# ----------------------------------------------------------------------------- errors


def test_seed_parsing():
    assert parse_seeds(n=3) == [0, 1, 2]
    assert parse_seeds(seeds="0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds(seeds="5,7,9") == [5, 7, 9]
    assert parse_seeds(seeds=" 9, 0-2 ,20") == [9, 0, 1, 2, 20]
    assert parse_seeds(seeds=[3, 1]) == [3, 1]
    assert shard_seeds(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    for bad in ("", "a-b", "5-2", "1,,2", "-3", "1.5", "1,1", "0-3,2"):
        with pytest.raises(InputError, match="seeds"):
            parse_seeds(seeds=bad)
    for bad in ([-1], [1.0], [True], []):
        with pytest.raises(InputError):
            parse_seeds(seeds=bad)
    for bad in (0, -2, 2.0):
        with pytest.raises(InputError, match="n must be"):
            parse_seeds(n=bad)
    with pytest.raises(InputError, match="exactly one"):
        parse_seeds()


def test_n_and_seeds_together(ckpt, tmp_path):
    with pytest.raises(InputError, match="exactly one of n"):
        sample(ckpt, tmp_path / "o", n=4, seeds="0-3")
    assert not (tmp_path / "o").exists()


def test_unknown_domain(tmp_path):
    with pytest.raises(InputError, match="unknown domain 'nosuchdomain'.*installed: .*points2d"):
        sample("nosuchdomain", tmp_path / "o", n=2)


def test_domain_name_without_default_model(points2d, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="domain 'points2d' ships no default model; pass a checkpoint"):
        sample("points2d", tmp_path / "o", n=2)
    monkeypatch.chdir(tmp_path)
    Path("points2d").mkdir()  # a folder that carries the domain's name is not taken for a checkpoint
    with pytest.raises(InputError, match="domain 'points2d' ships no default model"):
        sample("points2d", tmp_path / "o", n=2)


def test_domain_name_uses_its_shipped_model(points2d, ckpt, reference40, tmp_path, monkeypatch):
    import sciffusion_points2d

    monkeypatch.setattr(sciffusion_points2d.PointsDomain, "default_checkpoint", lambda self: ckpt)
    r = sample("points2d", tmp_path / "o", seeds="0-9", progress=False)
    assert r.files == 10 and r.checkpoint_hash == load_checkpoint(ckpt).hash
    ref = sample_files(reference40)
    assert sample_files(tmp_path / "o") == {k: ref[k] for k in sorted(ref)[:10]}


def test_foreign_and_damaged_checkpoints(ckpt, tmp_path):
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    with pytest.raises(CheckpointError, match=f"{pt}: not a sciffusion checkpoint"):
        sample(pt, tmp_path / "o", n=2)

    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "checkpoint.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=f"{bogus / 'checkpoint.json'}: corrupt"):
        sample(bogus, tmp_path / "o", n=2)

    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.json").write_text(json.dumps({"format": "something-else/1"}))
    with pytest.raises(CheckpointError, match="not a sciffusion checkpoint"):
        sample(other, tmp_path / "o", n=2)

    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=f"{missing}: no such checkpoint"):
        sample(missing, tmp_path / "o", n=2)

    truncated = tmp_path / "truncated"
    shutil.copytree(ckpt, truncated)
    ema = truncated / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{ema}: truncated"):
        sample(truncated, tmp_path / "o", n=2)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_weights_of_another_shape(points2d, points_data, tmp_path):
    """A checkpoint whose config says hidden=32 but whose weights are hidden=16."""
    bad = make_checkpoint(points2d, points_data, tmp_path / "bad", meta_overrides=["model.hidden=32"])
    with pytest.raises(CheckpointError, match=f"{bad / 'ema.safetensors'}: weights do not fit the model .*shape mismatch"):
        sample(bad, tmp_path / "o", n=2)
    with pytest.raises(CheckpointError, match=f"{bad / 'model.safetensors'}: weights do not fit"):
        sample(bad, tmp_path / "o", n=2, overrides=["sample.use_ema=false"])


def test_bad_sampling_options(ckpt, tmp_path):
    for kw, msg in [(dict(sampler="nope"), "sample.sampler: must be one of .*got 'nope'"),
                    (dict(grid="nope"), "sample.grid: must be one of .*got 'nope'"),
                    (dict(steps=0), "command line: sample.steps: must be >= 1, got 0"),
                    (dict(batch_size=-1), "sample.batch_size: must be >= 1"),
                    (dict(guidance=-1.0), "sample.guidance: must be >= 0"),
                    (dict(overrides=["sample.shard_size=0"]), "sample.shard_size: must be >= 1"),
                    (dict(overrides=["sample.stepz=5"]), r"command line: sample.stepz: unknown key.*did you mean 'steps'"),
                    (dict(overrides=["sample.eta=1"]), r"sample.eta: unknown key for sampler = 'dpmpp_2m'"),
                    (dict(overrides=["smaple.steps=5"]), r"unknown section \[smaple\] \(did you mean 'sample'"),
                    (dict(overrides=["nonsense"]), "override 'nonsense'"),
                    (dict(device="tpu:0"), "device")]:
        with pytest.raises(InputError, match=msg):
            sample(ckpt, tmp_path / "o", n=2, **kw)


def test_resume_with_another_config_is_refused(ckpt, reference40, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference40, out)
    with pytest.raises(InputError, match=f"{out}: holds samples made with another config .*sample.steps: 5 there, 6 now"):
        sample(ckpt, out, n=40, steps=6, progress=False)
    with pytest.raises(InputError, match=f"{out}: .*another config.*sample.label"):
        sample(ckpt, out, n=40, overrides=["sample.label=1"], progress=False)
    with pytest.raises(InputError, match=f"{out}: .*other seeds"):
        sample(ckpt, out, seeds="100-139", progress=False)
    # the refused runs left the folder as it was
    assert sample_files(out) == sample_files(reference40)
    assert manifest(out) == manifest(reference40)
    assert not temporaries(out)


def test_resume_with_another_checkpoint_is_refused(points2d, points_data, ckpt, reference40, tmp_path):
    other = make_checkpoint(points2d, points_data, tmp_path / "other", seed=1)
    out = tmp_path / "out"
    shutil.copytree(reference40, out)
    (out / "run.json").unlink()  # the parts alone still tell
    with pytest.raises(InputError, match=f"{out}: .*another checkpoint"):
        sample(other, out, n=40, progress=False)


def test_foreign_non_empty_folder_is_refused(ckpt, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("important")
    with pytest.raises(InputError, match=f"{out}: the folder is not empty and holds no sciffusion samples"):
        sample(ckpt, out, n=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_guidance_without_null_condition(ckpt, tmp_path, monkeypatch):
    import sciffusion_points2d

    monkeypatch.setattr(sciffusion_points2d.PointsDomain, "null_condition", lambda self, cfg, dc: None)
    with pytest.raises(InputError, match="domain 'points2d' has no null condition"):
        sample(ckpt, tmp_path / "o", n=2, guidance=2.0)
    sample(ckpt, tmp_path / "o", n=2, guidance=0.0, progress=False)  # unguided still works


# ----------------------------------------------------------------------------- guidance and overrides


def test_guidance_and_label_override(ckpt, reference40, tmp_path):
    out = tmp_path / "guided"
    r = sample(ckpt, out, n=20, guidance=2.0, overrides=["sample.label=1"], progress=False)
    assert r.files == 20
    labels = {p.read_text().splitlines()[0] for p in out.glob("*.csv")}
    assert labels == {"# label=1"}
    rows = manifest(out)
    assert {row["guidance"] for row in rows} == {2.0}
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["sample"]["label"] == 1 and run["config"]["sample"]["guidance"] == 2.0
    assert rows[0]["config_hash"] != manifest(reference40)[0]["config_hash"]

    plain = tmp_path / "plain"
    sample(ckpt, plain, n=20, overrides=["sample.label=1"], progress=False)
    guided, unguided = sample_files(out), sample_files(plain)
    assert guided.keys() == unguided.keys()
    assert sum(guided[k] != unguided[k] for k in guided) == 20  # the guidance weight changes every sample
    assert {p.read_text().splitlines()[0] for p in plain.glob("*.csv")} == {"# label=1"}


def test_progress_bar_runs(ckpt, tmp_path, capsys):
    r = sample(ckpt, tmp_path / "o", n=6, batch_size=4, progress=True)
    assert r.generated == 6


def test_written_files_get_normal_permissions(tmp_path):
    """Atomic writes go through 0600 temporaries; the final files must be readable like any other."""
    import os

    from sciffusion.core.io import atomic_directory, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_export_replaces_a_checkpoint_only_when_complete(ckpt, tmp_path):
    from sciffusion import api

    target = tmp_path / "shipped"
    first = api.export(ckpt, target, overrides=["sample.sampler=ddpm", "sample.steps=11"])
    assert first["sample"]["sampler"] == "ddpm" and first["sample"]["steps"] == 11
    assert load_checkpoint(target).config["sample"]["steps"] == 11
    (target / "MODEL_CARD.md").write_text("card")  # a file beside the weights goes with the old copy
    second = api.export(ckpt, target, overrides=["sample.steps=12"], replace=True)
    assert load_checkpoint(target).config["sample"]["steps"] == 12 and second["hash"] == first["hash"]  # same weights
    assert not (target / "MODEL_CARD.md").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["shipped"]  # no temporaries left
    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint; not replacing it"):
        api.export(ckpt, tmp_path / "notes", replace=True)
    with pytest.raises(InputError, match="already exists"):
        api.export(ckpt, target)


def test_sample_eta_changes_what_ddim_generates(ckpt, tmp_path):
    """sample.eta reaches the sampler in batch generation (it used to be honoured only by training
    metrics while the config hash recorded it): eta = 1 gives other files than eta = 0, eta = 0
    gives the files of euler (DDIM(0) is Euler on the PF-ODE) up to round-off, and the manifest
    records the option."""
    f64 = ["sample.dtype='float64'"]
    sample(ckpt, tmp_path / "e0", n=6, sampler="ddim", overrides=["sample.eta=0", *f64], progress=False)
    sample(ckpt, tmp_path / "e1", n=6, sampler="ddim", overrides=["sample.eta=1", *f64], progress=False)
    sample(ckpt, tmp_path / "eu", n=6, sampler="euler", overrides=f64, progress=False)
    e0, e1, eu = (sample_files(tmp_path / k) for k in ("e0", "e1", "eu"))
    assert all(e0[k] != e1[k] for k in e0)
    assert e0 == eu
    assert {r["eta"] for r in manifest(tmp_path / "e1")} == {1.0}
    assert {r["network_calls"] for r in manifest(tmp_path / "e1")} == {5}  # sample.steps = 5, sigma(0) = 0


def test_evaluate_never_hands_the_engines_files_to_a_domain(reference40):
    """A domain with file_suffix "" sees every file of a samples folder but the engine's own
    (manifest.jsonl, run.json, .parts/): they used to be read as samples and fail."""
    from sciffusion.api import collect_files

    files = collect_files([reference40], "")
    assert len(files) == 40 and all(f.suffix == ".csv" for f in files)
    assert {p.name for p in reference40.iterdir()} >= {"manifest.jsonl", "run.json", ".parts"}


def test_sample_folders_record_the_domains_provider(reference40):
    run = json.loads((reference40 / "run.json").read_text())
    assert run["plugin"]["distribution"] == "sciffusion-points2d" and run["plugin"]["domain"] == "points2d"


def test_a_damaged_file_is_regenerated_byte_identical(ckpt, reference40, tmp_path):
    """A truncated, an altered and a deleted sample: the rerun regenerates exactly their shards,
    and the repaired folder equals an undamaged run byte for byte (manifest rows record each
    file's size and sha256; a shard whose files merely exist is no longer trusted)."""
    out = tmp_path / "out"
    shutil.copytree(reference40, out)
    truncated, altered, deleted = out / "00000003.csv", out / "00000017.csv", out / "00000031.csv"
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    altered.write_text(altered.read_text().replace("x,y", "x,z"))
    deleted.unlink()
    r = sample(ckpt, out, n=40, batch_size=40, progress=False)
    assert r.generated == 30 and r.skipped == 10  # shards 0, 1 and 3 of four (shard_size 10)
    assert sample_files(out) == sample_files(reference40)
    assert manifest(out) == manifest(reference40)
    assert all(set(row["checks"]) == {row["file"]} for row in manifest(out))


def test_a_torn_manifest_line_is_repaired(ckpt, reference40, tmp_path):
    """A manifest.jsonl cut in the middle of a line, and a shard's part with a torn last line: the
    rerun regenerates that shard only and rewrites the manifest, byte-identical to an undamaged run."""
    out = tmp_path / "out"
    shutil.copytree(reference40, out)
    text = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(text[: len(text) - 40])
    r = sample(ckpt, out, n=40, batch_size=40, progress=False)  # the parts are whole: nothing to generate
    assert r.generated == 0 and r.skipped == 40
    assert (out / "manifest.jsonl").read_bytes() == (reference40 / "manifest.jsonl").read_bytes()
    (out / "manifest.jsonl").write_text(text[: len(text) - 40])
    part = sorted((out / ".parts").iterdir())[2]
    part_text = part.read_text()
    part.write_text(part_text[: len(part_text) - 25])
    r = sample(ckpt, out, n=40, batch_size=40, progress=False)
    assert r.generated == 10 and r.skipped == 30
    assert (out / "manifest.jsonl").read_bytes() == (reference40 / "manifest.jsonl").read_bytes()
    assert sample_files(out) == sample_files(reference40)


# ----------------------------------------------------------------------------- independent parts (job arrays)


def _part_script(tmp_path: Path, n: int, batch: int, overrides: list[str]) -> Path:
    script = tmp_path / "part.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        from sciffusion.core.generate import sample
        sample(sys.argv[1], sys.argv[2], n={n}, batch_size={batch}, overrides={overrides!r}, progress=False,
               part=sys.argv[3])
    """))
    return script


def test_parts_started_at_once_write_exactly_the_files_of_one_run(ckpt, reference40, points2d_env, tmp_path):
    """Three parts of a job array, started together on one folder with no coordination but the file
    system: the same files and manifest as one run; the part that completes the set writes it."""
    script = _part_script(tmp_path, 40, 40, [])
    out = tmp_path / "parts"
    procs = [subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), f"{k}/3"], env=points2d_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert sample_files(out) == sample_files(reference40)
    assert manifest(out) == manifest(reference40)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert sample(ckpt, out, n=40, batch_size=40, progress=False, part="1/3").generated == 0  # nothing twice


def test_a_killed_part_is_reported_by_verify_and_repaired_by_its_rerun(ckpt, points2d_env, tmp_path):
    from sciffusion.core.generate import verify

    n, over = 200, ["sample.shard_size=10", "sample.steps=40"]
    script = _part_script(tmp_path, n, 5, over)
    out = tmp_path / "array"
    cmd = [sys.executable, str(script), str(ckpt), str(out)]
    assert subprocess.run(cmd + ["1/2"], env=points2d_env, capture_output=True, timeout=300).returncode == 0
    assert not (out / "manifest.jsonl").exists()  # part 0 has not run: the set is incomplete
    proc = subprocess.Popen(cmd + ["0/2"], env=points2d_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts, deadline = out / ".parts", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("shard-*.jsonl"))) < 12:
        time.sleep(0.002)
    assert proc.poll() is None, "part 0 ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = verify(ckpt, out, n=n, overrides=over)
    assert state["missing"] and all((s // 10) % 2 == 0 for s in state["missing"])  # only part 0's shards
    assert not state["manifest"]
    (out / "00000013.csv").write_text("damaged")  # and a sample of part 1 gets damaged
    assert 13 in verify(ckpt, out, n=n, overrides=over)["missing"]
    for k in ("0/2", "1/2"):
        rerun = subprocess.run(cmd + [k], env=points2d_env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
    state = verify(ckpt, out, n=n, overrides=over)
    assert state["missing"] == [] and state["manifest"] and state["complete_shards"] == n // 10
    ref = tmp_path / "one"
    sample(ckpt, ref, n=n, batch_size=5, overrides=over, progress=False)
    assert sample_files(out) == sample_files(ref)
    assert manifest(out) == manifest(ref)


def test_part_arguments_are_checked(ckpt, tmp_path):
    with pytest.raises(InputError, match="K must lie in 0..2"):
        sample(ckpt, tmp_path / "a", n=4, part="3/3", progress=False)
    with pytest.raises(InputError, match="write K/N"):
        sample(ckpt, tmp_path / "b", n=4, part="half", progress=False)
    sample(ckpt, tmp_path / "c", n=4, progress=False)
    with pytest.raises(InputError, match="cannot be combined with --part"):
        sample(ckpt, tmp_path / "c", n=4, part="0/2", overwrite=True, progress=False)
