"""The shipped digits model samples on a fresh install (`sciffusion sample images -n 16 --out d`),
draws the digit it is asked for, and loads as the domain's default."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sciffusion import api
from sciffusion.cli.main import app
from sciffusion.domains.images import ImagesDomain

pytestmark = pytest.mark.skipif(ImagesDomain().default_checkpoint() is None, reason="no shipped digits model")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "shipped-cache"))


def test_the_readme_command_samples_sixteen_digits(tmp_path):
    out = tmp_path / "d"
    res = CliRunner().invoke(app, ["sample", "images", "-n", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("0*.png"))
    assert len(files) == 16 and (out / "grid.png").is_file()
    for f in files:
        with Image.open(f) as im:
            px = np.asarray(im)
        assert px.shape == (8, 8) and px.dtype == np.uint8 and px.std() > 10  # a digit, not a flat square
    assert json.loads((out / "run.json").read_text())["network_calls_per_sample"] == 10  # DPM-Solver++ 2M, 10 steps


def test_the_shipped_model_draws_the_digit_it_is_asked_for(tmp_path):
    out = tmp_path / "sevens"
    api.sample("images", out, n=60, overrides=["sample.label=7"])
    m = api.evaluate("images", [out], checkpoint=ImagesDomain().default_checkpoint())
    assert m["classifier"] == 1.0 and m["accuracy"] > 0.9, m


def test_the_python_api_returns_tensors_equal_to_the_written_files(tmp_path):
    """sciffusion.generate gives the sampler's tensors (no files); sciffusion.sample writes the same
    samples as 8-bit PNGs (equal up to quantisation)."""
    import sciffusion

    got = sciffusion.generate("images", seeds=[3, 4, 5], overrides=["sample.label=2"])
    x = got.x0["image"]
    assert x.shape == (3, 1, 8, 8) and got.network_calls == 10 and got.seeds == [3, 4, 5]
    assert [o["label_name"] for o in got.objects] == ["2", "2", "2"]
    sciffusion.sample("images", tmp_path / "s", seeds=[3, 4, 5], overrides=["sample.label=2"])
    for i, seed in enumerate([3, 4, 5]):
        with Image.open(tmp_path / "s" / f"{seed:08d}.png") as im:
            px = np.asarray(im).astype(np.float64) / 255.0
        want = ((x[i, 0].clamp(-1, 1) + 1) / 2).numpy()
        assert np.abs(px - want).max() <= 0.5 / 255 + 1e-6
