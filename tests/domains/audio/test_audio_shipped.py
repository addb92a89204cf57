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
import torch

from sciffusion.core.checkpoint import load_checkpoint
from sciffusion.core.config import flatten
from sciffusion.core.domain import denoiser_from_checkpoint, resolve_config
from sciffusion.core.registry import get_domain
from sciffusion.core.state import State
from sciffusion.domains.audio.data import fsdd_root
from sciffusion.domains.audio.mel import MelConfig
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


#: sum and absolute sum of each shipped denoiser's output on ``fixed_inputs`` (measured on the CPU
#: when the tables became typed; bit-identical to the outputs before)
FINGERPRINTS = {"audio": (-428.44710524483344, 3579.1777388783357),
                "vocoder": (-11.700757652553875, 692.4721706982418)}


def fixed_inputs(name: str):
    """(state, t, cond) for one denoiser call of the shipped model of ``name``."""
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.3, 0.8])
    if name == "audio":
        return State.dense(mel=torch.randn(2, 1, 64, 126, generator=g)), t, {"label": torch.tensor([7, 10])}
    wave = torch.randn(2, 1, 2048, generator=g)
    return State.dense(wave=wave), t, {"mel": torch.rand(2, 64, 33, generator=g) * 2 - 1}


@pytest.mark.parametrize("name", ["audio", "vocoder"])
def test_shipped_configs_resolve_and_give_the_same_network_outputs(name):
    domain = get_domain(name)
    ckpt = load_checkpoint(domain.default_checkpoint())
    cfg = resolve_config(domain, base=ckpt.config, base_name="checkpoint.json")
    stored, resolved = flatten(ckpt.config), flatten(cfg)
    assert {k: resolved.get(k) for k in stored} == stored  # the typed tables change nothing the checkpoint says
    x, t, cond = fixed_inputs(name)
    with torch.no_grad():
        y = denoiser_from_checkpoint(domain, ckpt, cfg)(x, t, cond)[x.names[0]]
    total, size = FINGERPRINTS[name]
    assert float(y.double().sum()) == pytest.approx(total, abs=1e-3)
    assert float(y.double().abs().sum()) == pytest.approx(size, abs=1e-3)


@pytest.fixture(scope="module")
def sevens(tmp_path_factory):
    """Ten clips of ``sample.label=7`` from the shipped model through the CLI, at its own sampler
    settings: (folder, waveforms (10, 8000) as read back from the WAVs)."""
    out = tmp_path_factory.mktemp("shipped") / "seven"
    cli("sample", "audio", "-n", "10", "--out", out, "sample.label=7")
    waves = [sf.read(str(p))[0] for p in sorted(out.glob("*.wav"))]
    return out, torch.tensor(np.stack(waves), dtype=torch.float32)


def heard(classifier, waves: torch.Tensor, digit: str) -> int:
    """How many clips the digit classifier takes for ``digit``."""
    return int((classifier.predict(waves) == classifier.label_names.index(digit)).sum())


def test_shipped_model_writes_labelled_clips_with_pictures(sevens):
    out, waves = sevens
    wavs = sorted(out.glob("*.wav"))
    assert [p.name for p in wavs] == [f"{i:08d}.wav" for i in range(10)]
    assert waves.shape == (10, 8000) and torch.isfinite(waves).all()
    assert bool((waves.pow(2).mean(dim=1).sqrt() > 1e-3).all())
    for p in wavs:
        assert sf.info(str(p)).samplerate == 8000
        with sf.SoundFile(str(p)) as f:
            assert json.loads(f.comment)["label"] == "7"
        assert p.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(fsdd_root() is None, reason="the digit classifier is trained on FSDD, which was not found "
                                                 "(../shared/data/fsdd/recordings or $SCIFFUSION_FSDD)")
def test_shipped_model_says_the_digit_asked_for(sevens):
    """The project's digit classifier (``AudioDomain.classifier``: FSDD's training split, cached
    after its first training) hears a seven in at least 7 of the 10 clips; white noise of the same
    length and level fails the same check, so the check can fail."""
    _, waves = sevens
    audio = get_domain("audio")
    clf = audio.classifier(MelConfig.from_dict(load_checkpoint(audio.default_checkpoint()).data_config["mel"]), 8000)
    assert heard(clf, waves, "7") >= 7
    level = waves.pow(2).mean(dim=1, keepdim=True).sqrt()
    noise = level * torch.randn(waves.shape, generator=torch.Generator().manual_seed(0))
    assert heard(clf, noise, "7") < 7


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
