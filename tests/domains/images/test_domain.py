"""The images domain end to end: train, sample (inpainting, SDEdit, super-resolution) and evaluate
from the CLI and the Python API, on the built-in digits and on a user's folder; what each edit
promises (known pixels kept exactly); bad images get the contract (exit 1, one line naming the
file, nothing written)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sciffusion import api
from sciffusion.cli.main import app
from sciffusion.core.checkpoint import latest_checkpoint, load_checkpoint
from sciffusion.core.checks import seed_independence
from sciffusion.core.domain import resolve_config
from sciffusion.core.io import InputError
from sciffusion.domains.images import ImagesDomain
from sciffusion.domains.images.data import load_digits
from sciffusion.domains.images.output import METADATA_KEY

TINY = ["model.channels=8", "model.mults=[1, 2]", "model.res_blocks=1", "model.attention_res=4", "model.heads=2",
        "train.batch_size=16", "train.steps=30", "train.ckpt_every=30", "train.log_every=10", "train.warmup_steps=5",
        "sample.batch_size=8", "sample.steps=4"]
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """The evaluation classifier is trained once per module, into a cache of its own."""
    old = os.environ.get("SCIFFUSION_CACHE")
    os.environ["SCIFFUSION_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SCIFFUSION_CACHE", None)
    else:
        os.environ["SCIFFUSION_CACHE"] = old


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    res = runner.invoke(app, ["train", "images", "--out", str(out), "--no-progress", *TINY])
    assert res.exit_code == 0, res.output
    return out


def _png(path):
    with Image.open(path) as im:
        meta = json.loads(im.text[METADATA_KEY]) if METADATA_KEY in im.text else {}
        return np.asarray(im), meta


def _digit_png(path, i):
    img = load_digits().examples[i]["image"]
    Image.fromarray(np.rint(img[0] * 255).astype(np.uint8), "L").save(path)
    return np.rint(img[0] * 255).astype(np.uint8)


def test_cli_trains_samples_and_evaluates_the_digits(digits_run, tmp_path):
    ckpt = load_checkpoint(latest_checkpoint(digits_run))
    dc = ckpt.data_config
    assert (dc["channels"], dc["height"], dc["width"]) == (1, 8, 8) and dc["label_names"] == [str(i) for i in range(10)]
    out = tmp_path / "s"
    res = runner.invoke(app, ["sample", str(digits_run), "-n", "12", "--out", str(out), "sample.label=3"])
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("0*.png"))
    assert len(files) == 12
    px, meta = _png(files[0])
    assert px.shape == (8, 8) and px.dtype == np.uint8 and meta["seed"] == 0 and meta["label"] == "3"
    rows = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == list(range(12)) and all(r["network_calls"] == 4 for r in rows)
    with Image.open(out / "grid.png") as grid:  # 12 panels: 8 columns x 2 rows of 64-pixel tiles
        g = np.asarray(grid.convert("L"))
    assert g.shape == (2 * (64 + 12 + 4) + 4, 8 * (64 + 4) + 4) and g.std() > 10
    assert json.loads((out / "run.json").read_text())["picture"] == "grid.png"
    none = tmp_path / "nogrid"
    api.sample(str(digits_run), none, n=2, overrides=["sample.grid_picture=false"])
    assert not (none / "grid.png").exists() and json.loads((none / "run.json").read_text())["picture"] is None
    res = runner.invoke(app, ["evaluate", "images", str(out), "--checkpoint", str(digits_run), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["files"] == 12 and m["classifier"] == 1.0  # grid.png is the engine's, not a sample
    for k in ("fid", "precision", "recall", "is", "accuracy"):
        assert np.isfinite(m[k]), k


def test_evaluate_scores_real_digits_better_than_noise(tmp_path):
    """Standalone evaluation (no checkpoint) compares with the digits: held-out digits written as
    PNG score a far lower FID than noise images."""
    real, noise = tmp_path / "real", tmp_path / "noise"
    real.mkdir()
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(0, 600, 10):  # every 10th digit: the held-out split
        _digit_png(real / f"{i:04d}.png", i)
        Image.fromarray(rng.integers(0, 256, (8, 8)).astype(np.uint8), "L").save(noise / f"{i:04d}.png")
    good, bad = api.evaluate("images", [real]), api.evaluate("images", [noise])
    assert good["classifier"] == bad["classifier"] == 1.0
    assert good["fid"] * 5 < bad["fid"] and good["precision"] > 0.5 > bad["precision"]


@pytest.mark.parametrize("sampler", ["euler", "repaint"])
def test_inpainting_keeps_every_known_pixel_exactly(digits_run, tmp_path, sampler):
    original = _digit_png(tmp_path / "orig.png", 5)
    out = tmp_path / "inp"
    over = [f"sample.inpaint={tmp_path / 'orig.png'}", "sample.mask_box=[2, 2, 4, 4]", f"sample.sampler={sampler}"]
    if sampler == "repaint":
        over.append("sample.resample=2")
    res = api.sample(str(digits_run), out, n=3, overrides=over)
    hole = np.zeros((8, 8), bool)
    hole[2:6, 2:6] = True
    changed = 0
    for f in sorted(out.glob("0*.png")):
        px, meta = _png(f)
        assert np.array_equal(px[~hole], original[~hole])
        changed += int((px[hole] != original[hole]).sum())
        assert meta["edit"] == "inpaint" and meta["original"] == str(tmp_path / "orig.png")
    assert changed > 0 and res.files == 3
    m = api.evaluate("images", [out], checkpoint=digits_run)
    assert m["paired"] == 3 and m["psnr"] > 10 and -1 <= m["ssim"] <= 1


def test_inpainting_with_a_mask_image_regenerates_only_its_nonzero_pixels(digits_run, tmp_path):
    original = _digit_png(tmp_path / "orig.png", 7)
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :3] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    out = tmp_path / "inp"
    res = runner.invoke(app, ["sample", str(digits_run), "-n", "2", "--out", str(out), "--guidance", "2", "sample.label=7",
                              f"sample.inpaint={tmp_path / 'orig.png'}", f"sample.mask={tmp_path / 'mask.png'}"])
    assert res.exit_code == 0, res.output
    for f in sorted(out.glob("0*.png")):
        px, _ = _png(f)
        assert np.array_equal(px[:, 3:], original[:, 3:])


def test_sdedit_starts_from_the_image_and_costs_the_grid_below_its_strength(digits_run, tmp_path):
    original = _digit_png(tmp_path / "src.png", 11).astype(float)
    diffs = {}
    for strength in (0.02, 0.9):
        out = tmp_path / f"sd{strength}"
        res = api.sample(str(digits_run), out, n=4, overrides=[f"sample.sdedit={tmp_path / 'src.png'}",
                                                               f"sample.strength={strength}", "sample.steps=10"])
        assert res.network_calls == (1 if strength == 0.02 else 9)  # uniform grid: times 0.9, 0.8, ..., 0.1
        diffs[strength] = np.mean([np.abs(_png(f)[0] - original).mean() for f in out.glob("0*.png")])
        assert _png(out / "00000000.png")[1]["edit"] == "sdedit"
    assert diffs[0.02] < 8 < diffs[0.9]


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_upscales_low_resolution_and_full_size_inputs(tmp_path, factor):
    run = tmp_path / "sr"
    api.train("images", None, run, overrides=TINY + [f"model.sr_factor={factor}"], progress=False)
    dc = load_checkpoint(latest_checkpoint(run)).data_config
    assert dc["sr_factor"] == factor and dc["label_names"] == []
    low = 8 // factor
    inputs = tmp_path / "in"
    inputs.mkdir()
    _digit_png(inputs / "a_full.png", 0)
    _digit_png(inputs / "b_full.png", 10)
    Image.fromarray(np.full((low, low), 200, np.uint8), "L").save(inputs / "c_low.png")
    out = tmp_path / "up"
    res = runner.invoke(app, ["sample", str(run), "-n", "3", "--out", str(out), f"sample.lowres={inputs}"])
    assert res.exit_code == 0, res.output
    metas = [_png(out / f"{s:08d}.png") for s in range(3)]
    assert all(px.shape == (8, 8) for px, _ in metas)
    assert [("original" in m) for _, m in metas] == [True, True, False]
    assert metas[0][1]["edit"] == f"super_resolution_x{factor}"
    m = api.evaluate("images", [out], checkpoint=run)
    assert m["paired"] == 2 and np.isfinite(m["psnr"])
    with pytest.raises(InputError, match="super-resolution model: set sample.lowres"):
        api.sample(str(run), tmp_path / "none", n=1)
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(tmp_path / "odd.png")
    with pytest.raises(InputError, match=rf"odd\.png: 5 x 5 pixels; this x{factor} model upscales {low} x {low}"):
        api.sample(str(run), tmp_path / "odd", n=1, overrides=[f"sample.lowres={tmp_path / 'odd.png'}"])


def _folder(root, size=(12, 10), mode="RGB", n=6):
    rng = np.random.default_rng(1)
    for label in ("cells", "stars"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(root / label / f"{i}.png")
    return root


def test_a_users_labelled_folder_trains_and_samples_by_label_name(tmp_path):
    data = _folder(tmp_path / "data")
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "images", "--out", str(run), f"data.path={data}", "data.split_every=3", *TINY,
                              "train.batch_size=4"])
    assert res.exit_code == 0, res.output
    dc = load_checkpoint(latest_checkpoint(run)).data_config
    assert dc["label_names"] == ["cells", "stars"] and (dc["channels"], dc["height"], dc["width"]) == (3, 12, 10)
    out = tmp_path / "s"
    res = runner.invoke(app, ["sample", str(run), "-n", "2", "--out", str(out), "sample.label=stars", "--guidance", "1"])
    assert res.exit_code == 0, res.output
    px, meta = _png(out / "00000001.png")
    assert px.shape == (12, 10, 3) and meta["label"] == "stars"


def test_16_bit_data_is_written_as_16_bit_png(tmp_path):
    data = tmp_path / "d16"
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(8):
        Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16)).save(data / f"{i}.png")
    run = tmp_path / "run"
    api.train("images", None, run, overrides=TINY + [f"data.path={data}", "train.batch_size=4"], progress=False)
    out = tmp_path / "s"
    api.sample(str(run), out, n=1)
    with Image.open(out / "00000000.png") as im:
        assert im.mode.startswith("I") and np.asarray(im).max() > 255


def test_raw_arrays_give_a_png_and_an_npy_in_the_datas_units(tmp_path):
    data = tmp_path / "npy"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        np.save(data / f"{i}.npy", (rng.normal(size=(2, 8, 8)) * 100 + 1000).astype(np.float32))
    run = tmp_path / "run"
    api.train("images", None, run, overrides=TINY + [f"data.path={data}", "train.batch_size=4"], progress=False)
    dc = load_checkpoint(latest_checkpoint(run)).data_config
    assert dc["bit_depth"] == 0 and dc["channels"] == 2 and 500 < dc["range"][0] < dc["range"][1] < 1500
    out = tmp_path / "s"
    res = api.sample(str(run), out, n=2)
    assert res.files == 2
    raw = np.load(out / "00000000.npy")
    assert raw.shape == (2, 8, 8) and dc["range"][0] - 1e-3 <= raw.min() and raw.max() <= dc["range"][1] + 1e-3
    px, meta = _png(out / "00000000.png")  # the PNG shows the two channels side by side, in 16 bits
    assert px.shape == (8, 16) and meta["array"] == "00000000.npy"
    obj = ImagesDomain().read(out / "00000000.png")  # and stands for the array when read
    lo, hi = dc["range"]
    assert np.allclose(obj["image"], (raw - lo) / (hi - lo), atol=1e-6)
    rows = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]
    assert "00000000.npy" in rows[0]["checks"]


@pytest.mark.parametrize("network", ["unet", "dit"])
def test_a_sample_depends_on_its_seed_alone(network, tmp_path):
    dom = ImagesDomain()
    cfg = resolve_config(dom, None, TINY + [f"model.network={network}", "model.hidden=16", "model.depth=1"])
    dc = {"channels": 1, "height": 8, "width": 8, "range": [0.0, 1.0], "bit_depth": 8, "label_names": ["a", "b"],
          "label_counts": [1, 1], "sr_factor": 0}
    den = dom.build_denoiser(cfg, dc)
    with torch.no_grad():
        for p in den.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert seed_independence(dom, den, cfg, dc, seeds=[0, 1]) < 1e-10


# ----------------------------------------------------------------------------- bad images


def _bad(tmp_path, name, data: bytes):
    data_dir = tmp_path / "bad"
    _folder(data_dir, size=(8, 8), mode="L", n=3)
    (data_dir / "cells" / name).write_bytes(data)
    return data_dir


def _contract(args, needle, out):
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name, data, why", [
    ("empty.png", b"", "empty file"),
    ("junk.png", b"this is not an image at all", "junk.png"),
    ("cut.png", None, "truncated"),
])
def test_bad_images_in_training_data_get_the_contract(tmp_path, name, data, why):
    if data is None:
        buf = tmp_path / "whole.png"
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(buf)
        data = buf.read_bytes()
        data = data[:len(data) // 2]
    folder = _bad(tmp_path, name, data)
    out = tmp_path / "run"
    _contract(["train", "images", "--out", str(out), f"data.path={folder}", *TINY, "train.batch_size=4"], why, out)
    assert name in runner.invoke(app, ["train", "images", "--out", str(out), f"data.path={folder}", *TINY, "train.batch_size=4"]).output


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    folder = _bad(tmp_path, "bomb.png", bomb)
    out = tmp_path / "run"
    _contract(["train", "images", "--out", str(out), f"data.path={folder}", *TINY, "train.batch_size=4"], "bomb.png", out)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "bomb.png").write_bytes(bomb)
    _contract(["evaluate", "images", str(samples)], "bomb.png", tmp_path / "nothing")


def test_mixed_sizes_name_the_odd_file_and_both_sizes(tmp_path):
    folder = _folder(tmp_path / "mixed", size=(8, 8), mode="L", n=3)
    Image.fromarray(np.zeros((9, 7), np.uint8), "L").save(folder / "stars" / "odd.png")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "images", "--out", str(out), f"data.path={folder}", *TINY, "train.batch_size=4"])
    assert res.exit_code == 1 and "odd.png" in res.output and "9" in res.output and "8" in res.output, res.output
    ok = runner.invoke(app, ["train", "images", "--out", str(out), f"data.path={folder}", "data.size=[8, 8]",
                             "data.resize=true", *TINY, "train.batch_size=4"])
    assert ok.exit_code == 0, ok.output


def test_evaluate_names_a_damaged_sample_and_skips_it_when_asked(digits_run, tmp_path):
    out = tmp_path / "s"
    api.sample(str(digits_run), out, n=4)
    (out / "00000002.png").write_bytes((out / "00000002.png").read_bytes()[:30])
    _contract(["evaluate", "images", str(out)], "00000002.png", tmp_path / "nothing")
    m = api.evaluate("images", [out], skip_bad=True)
    assert m["files"] == 3 and m["skipped"] == 1


def test_edit_inputs_of_the_wrong_size_are_named(digits_run, tmp_path):
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(tmp_path / "big.png")
    out = tmp_path / "o"
    _contract(["sample", str(digits_run), "-n", "1", "--out", str(out), f"sample.sdedit={tmp_path / 'big.png'}"],
              "big.png: 9 x 9 pixels, expected 8 x 8", out)
    _contract(["sample", str(digits_run), "-n", "1", "--out", str(out), f"sample.inpaint={tmp_path / 'big.png'}"],
              "sample.mask", out)


def test_an_original_that_changed_after_sampling_is_counted_not_scored(digits_run, tmp_path):
    _digit_png(tmp_path / "orig.png", 3)
    out = tmp_path / "inp"
    api.sample(str(digits_run), out, n=2, overrides=[f"sample.inpaint={tmp_path / 'orig.png'}",
                                                     "sample.mask_box=[0, 0, 8, 2]"])
    assert api.evaluate("images", [out])["paired"] == 2
    _digit_png(tmp_path / "orig.png", 4)  # another picture under the same name
    m = api.evaluate("images", [out])
    assert m["paired"] == 0 and m["originals_missing"] == 2 and "psnr" not in m


def test_a_raw_array_is_refused_as_the_input_of_a_model_of_8_bit_images(digits_run, tmp_path):
    np.save(tmp_path / "frame.npy", np.full((8, 8), 300.0, np.float32))
    out = tmp_path / "o"
    _contract(["sample", str(digits_run), "-n", "1", "--out", str(out), f"sample.sdedit={tmp_path / 'frame.npy'}"],
              "frame.npy: a raw array", out)


def test_a_failing_run_picture_warns_and_leaves_the_run_complete(digits_run, tmp_path, monkeypatch):
    def broken(self, files, path, cfg, data_config):
        raise MemoryError("too big")

    monkeypatch.setattr(ImagesDomain, "run_picture", broken)
    out = tmp_path / "s"
    with pytest.warns(UserWarning, match="run picture failed"):
        res = api.sample(str(digits_run), out, n=2)
    run = json.loads((out / "run.json").read_text())
    assert res.files == 2 and run["status"] == "complete" and run["picture"] is None and not (out / "grid.png").exists()


def test_the_dit_trains_and_samples_from_the_cli(tmp_path):
    run, out = tmp_path / "dit", tmp_path / "s"
    res = runner.invoke(app, ["train", "images", "--out", str(run), *TINY, "model.network=dit", "model.hidden=16",
                              "model.depth=1", "model.heads=2", "train.steps=5", "train.ckpt_every=5"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(latest_checkpoint(run)).config["model"]["network"] == "dit"
    res = runner.invoke(app, ["sample", str(run), "-n", "3", "--out", str(out), "sample.label=4"])
    assert res.exit_code == 0, res.output
    assert _png(out / "00000002.png")[1]["label"] == "4"


def test_a_job_array_from_the_cli_and_its_verify(digits_run, tmp_path):
    out = tmp_path / "array"
    args = ["sample", str(digits_run), "-n", "8", "--out", str(out), "sample.shard_size=2"]
    assert runner.invoke(app, args + ["--part", "0/2"]).exit_code == 0
    res = runner.invoke(app, args + ["--verify"])
    assert res.exit_code == 1 and "4 of 8 seeds missing or damaged" in res.output and "2, 3, 6, 7" in res.output
    assert runner.invoke(app, args + ["--part", "1/2"]).exit_code == 0
    res = runner.invoke(app, args + ["--verify"])
    assert res.exit_code == 0 and "all 8 seeds intact in 4 shards" in res.output, res.output
    rows = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == list(range(8)) and (out / "grid.png").is_file()
