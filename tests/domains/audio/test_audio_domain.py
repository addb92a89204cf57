"""The audio domain as the engine and a user meet it: registry, mel state layout, the conditional
U-Net, the frozen mel configuration check, outputs, and the CLI end to end on synthesised tones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain
from sciffusion.core.state import State
from sciffusion.domains.audio.data import fsdd_root
from sciffusion.domains.audio.mel import MelConfig, MelConfigMismatch
from sciffusion.domains.audio.output import save_spectrograms, spectrogram_png
from sciffusion.domains.audio.unet import MelUNet

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")
RATE = 8000
SYNTH_PATTERN = r"^(?P<label>[a-z]+)_synth_(?P<take>\d+)\.wav$"


@pytest.fixture(scope="module")
def domain():
    return get_domain("audio")


@pytest.fixture(scope="module")
def synth_cfg(domain, synth_dir):
    cfg = domain.default_config()
    cfg["data"].update(path=str(synth_dir), label_pattern=SYNTH_PATTERN, seconds=0.5)
    return cfg


@pytest.fixture(scope="module")
def data_config(domain, synth_cfg):
    return domain.data_config(domain.load_dataset(synth_cfg["data"], "train"), synth_cfg)


def test_registered(domain):
    assert domain.name == "audio" and domain.file_suffix == ".wav"
    cfg = domain.default_config()
    assert cfg["process"]["name"] == "vp_cosine" and cfg["objective"]["condition_dropout"] == 0.1
    assert cfg["sample"]["sampler"] == "dpmpp_2m" and cfg["sample"]["label"] == -1


def test_data_config_collate_decode_shapes(domain, synth_cfg, data_config):
    train = domain.load_dataset(synth_cfg["data"], "train")
    valid = domain.load_dataset(synth_cfg["data"], "valid")
    assert len(train) == 36 and len(valid) == 4
    assert data_config["label_names"] == ["high", "low", "mid", "sweep"] and sum(data_config["label_counts"]) == 36
    assert data_config["samples"] == 4000 and data_config["frames"] == 63 and data_config["n_mels"] == 64
    assert MelConfig.from_dict(data_config["mel"]) == domain.mel_config(synth_cfg)
    batch = domain.collate(train[:3], data_config)
    assert batch.x0["mel"].shape == (3, 1, 64, 63) and batch.x0["mel"].abs().max() <= 1.0
    assert batch.cond["label"].dtype == torch.long and batch.cond["label"].shape == (3,)
    objs = domain.decode(batch.x0, batch.cond, data_config)
    assert len(objs) == 3 and objs[0]["wave"].shape == (4000,) and objs[0]["sample_rate"] == RATE
    assert objs[0]["mel"].shape == (64, 63) and objs[0]["label_name"] == train[0]["label"]
    # the null condition is the extra label index
    assert domain.null_condition(synth_cfg, data_config) == {"label": 4}


def test_template_labels_are_per_seed(domain, synth_cfg, data_config):
    a = domain.template([0, 1, 2, 3, 4, 5], synth_cfg, data_config)
    b = domain.template([3, 4, 5], synth_cfg, data_config)
    assert a.x0["mel"].shape == (6, 1, 64, 63)
    assert a.cond["label"][3:].tolist() == b.cond["label"].tolist()
    cfg = dict(synth_cfg, sample=dict(synth_cfg["sample"], label="mid"))
    assert domain.template([0, 1], cfg, data_config).cond["label"].tolist() == [2, 2]
    with pytest.raises(InputError, match="not one of the model's labels"):
        domain.template([0], dict(synth_cfg, sample=dict(synth_cfg["sample"], label="bass")), data_config)


def test_unet_is_conditional_and_null_label_works():
    torch.manual_seed(0)
    net = MelUNet(num_classes=3, channels=8, mults=[1, 2], res_blocks=1)
    for p in net.parameters():  # zero-initialised output layers would hide the condition
        torch.nn.init.normal_(p, std=0.1)
    x = State.dense(mel=torch.randn(2, 1, 16, 13))  # 13 frames: not divisible by 2, padded inside
    t = torch.tensor([0.3, 0.7])
    y0 = net(x, t, {"label": torch.tensor([0, 0])})["mel"]
    y1 = net(x, t, {"label": torch.tensor([1, 1])})["mel"]
    yn = net(x, t, {"label": torch.tensor([3, 3])})["mel"]
    assert y0.shape == (2, 1, 16, 13) and not torch.allclose(y0, y1)
    assert torch.allclose(yn, net(x, t, None)["mel"]) and torch.isfinite(yn).all()
    assert torch.allclose(net(x, t, {"label": torch.tensor([-1, -1])})["mel"], yn)


def test_mel_config_mismatch_raises(domain, synth_cfg, data_config):
    other = MelConfig(n_mels=80)
    with pytest.raises(MelConfigMismatch, match="n_mels"):
        domain.check_mel(data_config, other)
    with pytest.raises(MelConfigMismatch, match="n_mels"):
        domain.mels(torch.zeros(1, 4000), data_config, mel_config=other)
    cfg = dict(synth_cfg, data=dict(synth_cfg["data"], mel={"hop_length": 128}))
    with pytest.raises(MelConfigMismatch, match="hop_length"):
        domain.template([0], cfg, data_config)
    clip = {"wave": torch.zeros(4000), "label": "low", "sample_rate": 16000}
    with pytest.raises(MelConfigMismatch, match="16000 Hz"):
        domain.collate([clip], data_config)
    with pytest.raises(MelConfigMismatch):
        domain.decode(State.dense(mel=torch.zeros(1, 1, 80, 63)), None, data_config)


def test_write_read_and_spectrograms(domain, synth_cfg, data_config, tmp_path):
    batch = domain.collate(domain.load_dataset(synth_cfg["data"], "valid")[:2], data_config)
    objs = domain.decode(batch.x0, batch.cond, data_config)
    domain.template([7, 12], synth_cfg, data_config)  # sample.spectrograms (default on): a picture beside each WAV
    written = domain.write(objs, [7, 12], tmp_path, data_config)
    assert [[p.name for p in pair] for pair in written] == [["00000007.wav", "00000007.png"], ["00000012.wav", "00000012.png"]]
    assert all(pair[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for pair in written)
    paths = [pair[0] for pair in written]
    domain.template([7, 12], dict(synth_cfg, sample=dict(synth_cfg["sample"], spectrograms=False)), data_config)
    assert [p.name for p in domain.write(objs, [7, 12], tmp_path / "plain", data_config)] == ["00000007.wav", "00000012.wav"]
    assert not list((tmp_path / "plain").glob("*.png"))
    info = sf.info(str(paths[0]))
    assert info.samplerate == RATE and info.frames == 4000 and info.subtype == "PCM_16"
    back = domain.read(paths[0])
    assert back["label_name"] == objs[0]["label_name"] and back["wave"].shape == (4000,)
    m = domain.metrics([back], data_config)
    assert m["n"] == 1 and abs(m["duration_s"] - 0.5) < 1e-9 and m["rms"] > 0 and m["classifier"] == 0.0
    png = spectrogram_png(tmp_path / "grid.png", [o["mel"] for o in objs], ["a", "b"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(save_spectrograms(tmp_path / "spec", objs)) == 2
    with pytest.raises(InputError):
        bad = tmp_path / "bad.wav"
        bad.write_text("not audio")
        domain.read(bad)


def test_missing_fsdd_is_a_clear_error(domain, monkeypatch):
    import sciffusion.domains.audio.data as data

    monkeypatch.setattr(data, "fsdd_root", lambda: None)
    with pytest.raises(InputError, match="Free Spoken Digit Dataset was not found"):
        domain.load_dataset(domain.default_config()["data"], "train")


@pytest.mark.skipif(fsdd_root() is None, reason="FSDD not found (set SCIFFUSION_FSDD or place it at "
                                                 "../shared/data/fsdd/recordings)")
def test_fsdd_default_data(domain):
    cfg = domain.default_config()
    train = domain.load_dataset(cfg["data"], "train")
    dc = domain.data_config(train[:50], cfg)
    assert dc["source"] == "fsdd" and dc["frames"] == 126 and dc["samples"] == 8000
    assert domain.collate(train[:2], dc).x0["mel"].shape == (2, 1, 64, 126)


def test_cli_train_sample_evaluate_on_synthesised_audio(synth_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*args):
        p = subprocess.run([SCIFFUSION, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stderr
        return p.stdout

    run_dir = tmp_path / "run"
    run("train", "audio", "--out", run_dir, f"data.path={synth_dir}", f"data.label_pattern={SYNTH_PATTERN}",
        "data.seconds=0.5", "model.channels=8", "model.mults=[1,2]", "train.steps=20", "train.batch_size=8",
        "train.log_every=10", "train.ckpt_every=20")
    out = tmp_path / "samples"
    run("sample", run_dir, "-n", "4", "--steps", "5", "--out", out, "sample.griffin_lim_iters=4")
    wavs = sorted(out.glob("*.wav"))
    assert [p.name for p in wavs] == [f"{i:08d}.wav" for i in range(4)]
    for p in wavs:
        wave, rate = sf.read(str(p))
        assert rate == RATE and wave.shape == (4000,) and np.isfinite(wave).all()
    manifest = out / "manifest.jsonl"
    assert manifest.is_file() and len(manifest.read_text().splitlines()) == 4
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["companions"] for r in rows] == [[f"{i:08d}.png"] for i in range(4)]
    assert all((out / r["companions"][0]).is_file() for r in rows)
    (out / "00000002.png").unlink()  # a listed companion went missing: the rerun makes its shard again
    run("sample", run_dir, "-n", "4", "--steps", "5", "--out", out, "sample.griffin_lim_iters=4")
    assert (out / "00000002.png").is_file() and [json.loads(x) for x in manifest.read_text().splitlines()] == rows
    m = json.loads(run("evaluate", "audio", out, "--checkpoint", run_dir, "--json"))
    assert m["files"] == 4 and m["n"] == 4 and abs(m["duration_s"] - 0.5) < 1e-9 and np.isfinite(m["rms"])
