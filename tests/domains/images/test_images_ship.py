"""The images card writer (domains/images/weights/ship.py): the digits card and the super-resolution
card are written from the checkpoint, the run's log and what the run measures."""

import re

import pytest

from sciffusion import api
from sciffusion.core.checkpoint import latest_checkpoint, load_checkpoint

TINY = ["model.channels=8", "model.mults=[1, 2]", "model.res_blocks=1", "model.attention_res=4", "model.heads=2",
        "train.batch_size=16", "train.steps=10", "train.ckpt_every=10", "train.log_every=5", "sample.batch_size=64"]


@pytest.fixture(scope="module")
def ship(load_script):
    return load_script("domains/images/weights/ship.py")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "ship-cache"))


def test_the_digits_card_is_measured(ship, tmp_path):
    run = tmp_path / "run"
    api.train("images", None, run, overrides=TINY, progress=False)
    ckpt = latest_checkpoint(run)
    out = tmp_path / "CARD.md"
    ship.main(["card", "--model", str(ckpt), "--out", str(out), "--samples", "40", "--log", str(run / "log.jsonl"),
               "--calls", "2", "--guidance", "0", "--sweep-samples", "20", "--inpaint-samples", "6"])
    text = out.read_text()
    c = load_checkpoint(ckpt)
    assert f"EMA of step {c.step}" in text and c.hash[:16] in text and "1,617 training images" in text
    assert re.search(r"\| this model \(40 samples\) \| \d+\.\d\d \|", text)
    assert "| held-out digits (180) | " in text and "## Inpainting (6 held-out digits" in text
    assert "## Measured on" in text and "steps 0 to 10" in text


def test_the_super_resolution_card_compares_with_bicubic(ship, tmp_path):
    run = tmp_path / "sr"
    api.train("images", None, run, overrides=TINY + ["model.sr_factor=2"], progress=False)
    out = tmp_path / "SR.md"
    ship.main(["sr-card", "--model", str(latest_checkpoint(run)), "--out", str(out), "--samples", "5", "--calls", "1",
               "--log", str(run / "log.jsonl")])
    text = out.read_text()
    assert "x2 super-resolution" in text and "## Quality (5 held-out patches" in text
    assert re.search(r"\| bicubic \| 0 \| \d+\.\d\d \| \d\.\d{3} \| - \|", text)
    assert re.search(r"\| SR3 x2 \(euler\) \| 1 \| \d+\.\d\d \|", text)
