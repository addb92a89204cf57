"""The audio models shipped in the package: they load, speak through the CLI (WAVs with pictures), the
vocoder plugs into the mel model, and the model card credits FSDD. Plus (slow) the FSDD recipe end
to end through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sciffusion.core.checkpoint import load_checkpoint
from sciffusion.core.registry import get_domain
from sciffusion.domains.audio.data import fsdd_root
from sciffusion.domains.audio.vocoder import VocoderDomain

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli(*args, rc: int = 0) -> subprocess.CompletedProcess:
    p = subprocess.run([SCIFFUSION, *map(str, args)], capture_output=True, text=True, timeout=900, env=ENV)
    assert p.returncode == rc, p.stderr
    return p


def test_shipped_models_load_and_carry_a_model_card():
    mel = get_domain("audio").default_checkpoint()
    voc = VocoderDomain().default_checkpoint()
    assert mel is not None and voc is not None, "the package ships weights/fsdd and weights/fsdd_vocoder"
    ckpt = load_checkpoint(mel)  # verifies the file hashes
    assert ckpt.data_config["source"] == "fsdd" and ckpt.data_config["label_names"] == [str(d) for d in range(10)]
    assert load_checkpoint(voc).data_config["mel"] == ckpt.data_config["mel"]
    card = (mel / "MODEL_CARD.md").read_text()
    assert "Free Spoken Digit Dataset" in card and "CC BY-SA 4.0" in card and "| shipped model" in card


def test_shipped_model_says_a_digit(tmp_path):
    out = tmp_path / "seven"
    cli("sample", "audio", "-n", "2", "--steps", "4", "--out", out, "sample.label=7")
    wavs = sorted(out.glob("*.wav"))
    assert [p.name for p in wavs] == ["00000000.wav", "00000001.wav"]
    for p in wavs:
        wave, rate = sf.read(str(p))
        assert rate == 8000 and wave.shape == (8000,) and np.isfinite(wave).all() and np.sqrt((wave ** 2).mean()) > 1e-3
        with sf.SoundFile(str(p)) as f:
            assert json.loads(f.comment)["label"] == "7"
        assert p.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_shipped_vocoder_plugs_into_the_shipped_mel_model(tmp_path):
    out = tmp_path / "neural"
    cli("sample", "audio", "-n", "1", "--steps", "2", "--out", out, "sample.vocoder=shipped", "sample.label=3",
        "sample.spectrograms=false")
    wave, rate = sf.read(str(out / "00000000.wav"))
    assert rate == 8000 and wave.shape == (8000,) and np.isfinite(wave).all()


@pytest.mark.slow
@pytest.mark.skipif(fsdd_root() is None, reason="FSDD not found (../shared/data/fsdd/recordings or $SCIFFUSION_FSDD)")
def test_fsdd_recipe_end_to_end(tmp_path):
    run = tmp_path / "run"
    cli("train", "audio", "--config", Path(__file__).parents[3] / "domains/audio/configs/fsdd_small.toml", "--out", run,
        "model.channels=16", "model.res_blocks=1", "train.steps=6", "train.ckpt_every=6", "train.log_every=3",
        "train.warmup_steps=0")
    out = tmp_path / "clips"
    cli("sample", run, "-n", "12", "--steps", "3", "--out", out, "sample.spectrograms=false")
    m = json.loads(cli("evaluate", "audio", out, "--checkpoint", run, "--json").stdout)
    assert m["n"] == 12 and m["classifier"] == 1.0 and {"fid", "is", "accuracy", "ndb_k"} <= set(m)
