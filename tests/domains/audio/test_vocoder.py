"""The vocoder domain (DiffWave-style mel -> waveform diffusion): the network's shapes and mel
upsampling, the DDPM schedule, training segments, copy-synthesis and evaluation through the CLI on
synthesised tones, bad inputs, mel-configuration checks, and the audio domain vocoding with it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sciffusion.api import evaluate
from sciffusion.core.config import ConfigError
from sciffusion.core.domain import resolve_config
from sciffusion.core.generate import sample
from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain
from sciffusion.core.state import State
from sciffusion.core.train import train
from sciffusion.domains.audio.data import fsdd_root
from sciffusion.domains.audio.mel import MelConfig, MelConfigMismatch, num_frames, waveform_to_mel
from sciffusion.domains.audio.vocoder import ddpm_linear_process, load_vocoder, trailing_silence_start
from sciffusion.domains.audio.wavenet import DiffWave, MelUpsampler, build_diffwave, step_embedding, upsample_strides

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")
RATE = 8000
TINY = ["model.residual_channels=8", "model.layers=4", "model.dilation_cycle=4", "model.step_hidden=32",
        "model.step_dim=32"]


def tone(f: float, seconds: float = 0.5, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * f * t) * np.hanning(t.size)).astype(np.float32)


def run_cli(*args, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([SCIFFUSION, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def domain():
    return get_domain("vocoder")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocoder-tones")
    for i in range(12):
        sf.write(str(d / f"tone_{i:02d}.wav"), tone(250.0 * (1 + i % 6), 0.3 + 0.05 * (i % 4)), RATE, subtype="PCM_16")
    return d


@pytest.fixture(scope="module")
def synth_cfg(domain, synth_dir):
    cfg = domain.default_config()
    cfg["data"].update(path=str(synth_dir), label_pattern="", seconds=0.5, segment_seconds=0.125)
    return cfg


@pytest.fixture(scope="module")
def vocoder_run(synth_dir, tmp_path_factory):
    """A tiny vocoder trained for 40 steps on the tones through the CLI."""
    run_dir = tmp_path_factory.mktemp("vocoder-run")
    run_cli("train", "vocoder", "--out", run_dir, f"data.path={synth_dir}", "data.label_pattern=",
            "data.seconds=0.5", "data.segment_seconds=0.125", *TINY, "train.steps=40", "train.batch_size=8",
            "train.lr=1e-3", "train.log_every=10", "train.ckpt_every=40", "--no-progress")
    return run_dir


# ----------------------------------------------------------------------------- network


def test_upsampler_strides_from_the_hop():
    assert upsample_strides(64) == [4, 4, 4] and upsample_strides(128) == [4, 4, 4, 2]
    assert upsample_strides(256) == [4, 4, 4, 4] and upsample_strides(100, [4, 5, 5]) == [4, 5, 5]
    with pytest.raises(InputError, match="hop_length 100 is not a power of two"):
        upsample_strides(100)
    with pytest.raises(InputError, match="product equals the mel hop_length 64"):
        upsample_strides(64, [4, 4])
    with pytest.raises(InputError, match="not a power of two"):
        build_diffwave({}, 64, 100)
    net = build_diffwave({"upsample_strides": [4, 5, 5], "residual_channels": 4, "layers": 2}, 16, 100)
    assert net.upsampler.hop == 100


@pytest.mark.parametrize("strides", [[4, 4, 4], [4, 5, 5], [2]])
def test_upsampler_lengths_and_alignment(strides):
    torch.manual_seed(0)
    up = MelUpsampler(strides)
    hop = up.hop
    assert up(torch.randn(2, 8, 7)).shape == (2, 8, 7 * hop)
    for conv in up.convs:  # constant positive kernels: frame j's response must be centred on sample j * hop
        torch.nn.init.constant_(conv.weight, 1.0)
        torch.nn.init.zeros_(conv.bias)
    j = 3
    mel = torch.zeros(1, 1, 8)
    mel[0, 0, j] = 1.0
    with torch.no_grad():
        y = up(mel)[0, 0]
    n = torch.arange(y.numel(), dtype=torch.float64)
    centre = float((y.double() * n).sum() / y.double().sum())
    assert abs(centre - j * hop) < 1e-6
    assert float(y[j * hop]) == float(y.max()) and float(y[: (j - 2) * hop].abs().max()) == 0.0


def test_network_shapes_dilations_and_conditioning():
    torch.manual_seed(0)
    net = DiffWave(n_mels=16, hop_length=64, residual_channels=8, layers=5, dilation_cycle=3, step_hidden=32)
    assert [layer.dilated.dilation[0] for layer in net.layers] == [1, 2, 4, 1, 2]
    L = 1000  # not a multiple of the hop: the upsampled conditioner is cropped
    x = State.dense(wave=torch.randn(2, 1, L))
    mel = torch.rand(2, 16, num_frames(L, MelConfig())) * 2 - 1
    t = torch.tensor([0.2, 0.8])
    with torch.no_grad():
        y = net(x, t, {"mel": mel})["wave"]
        c = net.conditioner(mel, L)
    assert y.shape == (2, 1, L) and float(y.abs().max()) == 0.0  # zero-initialised output convolution
    # the upsampler starts as linear interpolation of the mel in [0, 1] units, frame j at sample 64 j
    assert c.shape == (2, 16, L)
    assert torch.allclose(c[..., ::64], (mel[..., :16] + 1) / 2, atol=1e-6)
    assert torch.allclose(c[..., 32], (mel[..., 0] + mel[..., 1] + 2) / 4, atol=1e-6)
    torch.nn.init.normal_(net.output_proj.weight, std=0.1)
    net.requires_grad_(False)
    y = net(x, t, {"mel": mel})["wave"]
    assert float(y.abs().max()) > 0
    assert not torch.allclose(y, net(x, t, {"mel": -mel})["wave"])  # the mel reaches the output
    assert not torch.allclose(y, net(x, t.flip(0), {"mel": mel})["wave"])  # so does the step
    with pytest.raises(ValueError, match="cover"):
        net(x, t, {"mel": mel[..., :10]})
    with pytest.raises(ValueError, match="needs cond"):
        net(x, t, None)
    e = step_embedding(torch.tensor([0.0, 0.02]), 16)
    assert e.shape == (2, 16) and torch.allclose(e[0], torch.cat([torch.zeros(8), torch.ones(8)]))


def test_ddpm_linear_process_matches_the_discrete_schedule():
    """DDPM (Ho et al. 2020, eq. 4): beta_n evenly spaced from beta_1 to beta_T, alpha-bar_n =
    prod_{i<=n} (1 - beta_i), written out here; t = n/T of the process has alpha^2 = alpha-bar_n."""
    a2, prod = [], 1.0
    for n in range(50):
        prod *= 1.0 - (1e-4 + (0.05 - 1e-4) * n / 49)
        a2.append(prod)
    proc = ddpm_linear_process(50, 1e-4, 0.05)
    t = torch.arange(0, 51, dtype=torch.float64) / 50
    assert torch.allclose(proc.alpha(t)[1:] ** 2, torch.tensor(a2, dtype=torch.float64), rtol=1e-9)
    assert float(proc.alpha(t[:1])) == 1.0 and float(proc.sigma(t[:1])) == 0.0
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        ddpm_linear_process(50, 0.05, 1e-4)


# ----------------------------------------------------------------------------- data


def test_data_config_and_training_segments(domain, synth_cfg):
    train = domain.load_dataset(synth_cfg["data"], "train")
    dc = domain.data_config(train, synth_cfg)
    assert dc["samples"] == 4000 and dc["segment_samples"] == 1024 and dc["segment_frames"] == 17
    assert MelConfig.from_dict(dc["mel"]) == MelConfig() and "label_names" not in dc
    # each clip's audio ends where its zero padding starts
    assert all(e["active"] == trailing_silence_start(e["wave"]) <= 4000 for e in train)
    assert min(e["active"] for e in train) < 4000
    torch.manual_seed(1)
    b1 = domain.collate(train[:6], dc)
    torch.manual_seed(1)
    b2 = domain.collate(train[:6], dc)
    assert b1.x0["wave"].shape == (6, 1, 1024) and b1.cond["mel"].shape == (6, 64, 17)
    assert torch.equal(b1.x0["wave"], b2.x0["wave"])  # segments: a function of the RNG the trainer seeds
    assert torch.allclose(b1.cond["mel"], waveform_to_mel(b1.x0["wave"][:, 0]))
    starts = set()
    for seed in range(20):  # hop-aligned windows of the clip that start inside its audio
        torch.manual_seed(seed)
        seg = domain.collate(train[:1], dc).x0["wave"][0, 0]
        w = torch.as_tensor(train[0]["wave"])
        hits = [a for a in range(0, 4000 - 1024 + 1, 64) if torch.equal(w[a:a + 1024], seg)]
        assert hits and hits[0] < train[0]["active"]
        starts.add(hits[0])
    assert len(starts) > 3
    cfg = dict(synth_cfg, data=dict(synth_cfg["data"], segment_seconds=0.75))
    with pytest.raises(InputError, match="segment_seconds"):
        domain.data_config(train, cfg)


# ----------------------------------------------------------------------------- CLI end to end


def test_cli_train_copy_synthesis_and_evaluate(vocoder_run, synth_dir, tmp_path):
    losses = [r["loss"] for r in map(json.loads, (vocoder_run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    out = tmp_path / "copy"
    run_cli("sample", vocoder_run, "-n", "3", "--out", out, f"sample.input={synth_dir}", "--no-progress")
    wavs = sorted(out.glob("*.wav"))
    assert [p.name for p in wavs] == [f"{i:08d}.wav" for i in range(3)]
    for p in wavs:
        wave, rate = sf.read(str(p))
        assert rate == RATE and wave.shape == (4000,) and np.isfinite(wave).all() and np.abs(wave).max() > 0
    # seed s re-synthesises the s-th file, with noise from the seed alone: seed 2 on its own gives the same clip
    sample(vocoder_run, tmp_path / "one", seeds=[2], overrides=[f"sample.input={synth_dir}"], device="cpu",
           progress=False)
    a, _ = sf.read(str(out / "00000002.wav"), dtype="int16")
    b, _ = sf.read(str(tmp_path / "one" / "00000002.wav"), dtype="int16")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with sf.SoundFile(str(wavs[2])) as f:
        assert json.loads(f.comment)["source"] == str(sorted(synth_dir.glob("*.wav"))[2])
    m = json.loads(run_cli("evaluate", "vocoder", out, "--checkpoint", vocoder_run, "--json").stdout)
    assert m["files"] == 3 and m["n_reference"] == 3 and abs(m["duration_s"] - 0.5) < 1e-9
    assert all(np.isfinite(m[k]) and m[k] > 0 for k in ("spectral_convergence", "lsd", "mcd", "rms"))
    # a file without a known source is scored without reference metrics
    plain = tmp_path / "plain"
    plain.mkdir()
    sf.write(str(plain / "x.wav"), tone(440.0), RATE)
    m = evaluate("vocoder", [plain])
    assert m["n_reference"] == 0 and "spectral_convergence" not in m and m["rms"] > 0


def test_reference_metrics_score_the_copy(domain, synth_cfg):
    train = domain.load_dataset(synth_cfg["data"], "train")
    dc = domain.data_config(train, synth_cfg)
    ref = np.asarray(train[0]["wave"], dtype=np.float32)
    noisy = ref + np.random.default_rng(0).normal(0, 0.05, ref.shape).astype(np.float32)
    same = domain.metrics([{"wave": ref, "sample_rate": RATE, "reference": ref}], dc)
    worse = domain.metrics([{"wave": noisy, "sample_rate": RATE, "reference": ref}], dc)
    assert same["spectral_convergence"] == pytest.approx(0.0, abs=1e-6) and same["mcd"] == pytest.approx(0.0, abs=1e-4)
    assert worse["spectral_convergence"] > 0.1 and worse["lsd"] > same["lsd"] + 1 and worse["mcd"] > 1


def test_bad_sample_input_is_a_one_line_error(vocoder_run, synth_dir, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match=f"{missing}: sample.input does not exist"):
        sample(vocoder_run, tmp_path / "a", n=1, overrides=[f"sample.input={missing}"], device="cpu", progress=False)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "a.wav").write_text("this is not audio")
    p = run_cli("sample", vocoder_run, "-n", "1", "--out", tmp_path / "b", f"sample.input={bad_dir}", ok=False)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
    assert str(bad_dir / "a.wav") in p.stderr and "not a readable audio file" in p.stderr
    assert not list((tmp_path / "b").glob("*.wav"))
    with pytest.raises(InputError, match="seed 12 asks for file 12, but sample.input holds 12 audio files"):
        sample(vocoder_run, tmp_path / "c", n=13, overrides=[f"sample.input={synth_dir}"], device="cpu", progress=False)


# ----------------------------------------------------------------------------- the audio domain vocoding


def _audio_data_config(mel: dict | None = None) -> dict:
    audio = get_domain("audio")
    cfg = audio.default_config()
    mel_cfg = MelConfig.from_dict(dict(MelConfig().to_dict(), **(mel or {})))
    return {"source": "synth", "mel": mel_cfg.to_dict(), "sample_rate": RATE, "samples": 4000, "seconds": 0.5,
            "n_mels": mel_cfg.n_mels, "frames": num_frames(4000, mel_cfg), "label_names": [], "label_counts": []}, cfg


def test_audio_decode_with_the_vocoder_is_keyed_by_seed(vocoder_run):
    audio = get_domain("audio")
    dc, cfg = _audio_data_config()
    cfg["sample"].update(vocoder=str(vocoder_run), spectrograms=False)
    mels = waveform_to_mel(torch.stack([torch.from_numpy(tone(f)) for f in (300.0, 700.0, 1500.0)])).unsqueeze(1)

    def decode(seeds, rows):
        tpl = audio.template(seeds, cfg, dc)
        return lambda: audio.decode(State.dense(mel=mels[rows]), tpl.cond, dc)

    together = decode([4, 5, 6], [0, 1, 2])()
    # generation order: the next batch's template is made before this batch is decoded
    first, second, third = decode([6, 4], [2, 0]), decode([5, 7], [1, 1]), decode([5], [1])
    a, b, c = first(), second(), third()
    assert np.allclose(a[0]["wave"], together[2]["wave"], atol=1e-5)
    assert np.allclose(a[1]["wave"], together[0]["wave"], atol=1e-5)
    assert np.allclose(b[0]["wave"], together[1]["wave"], atol=1e-5)
    assert np.allclose(c[0]["wave"], together[1]["wave"], atol=1e-5)
    other = decode([9, 5, 6], [0, 1, 2])()
    assert not np.allclose(other[0]["wave"], together[0]["wave"], atol=1e-3)  # another seed, other noise
    assert together[0]["wave"].shape == (4000,) and np.isfinite(together[0]["wave"]).all()


def test_mel_config_mismatch_between_audio_model_and_vocoder(vocoder_run):
    audio = get_domain("audio")
    dc, cfg = _audio_data_config({"n_mels": 32})
    cfg["sample"]["vocoder"] = str(vocoder_run)
    with pytest.raises(MelConfigMismatch, match="n_mels: 32 != 64"):
        audio.template([0], cfg, dc)
    voc = load_vocoder(vocoder_run)
    with pytest.raises(MelConfigMismatch, match="hop_length"):
        voc.check_mel(MelConfig(hop_length=128), "test")
    with pytest.raises(MelConfigMismatch, match="expected"):
        voc(torch.zeros(1, 32, 63), [0], 4000)
    # the vocoder's own template refuses a run whose data.mel differs from its checkpoint's
    vdom = get_domain("vocoder")
    vcfg = dict(voc.config, data=dict(voc.config["data"], mel={"n_fft": 512, "win_length": 512}))
    with pytest.raises(MelConfigMismatch, match="n_fft"):
        vdom.template([0], vcfg, voc.ckpt.data_config)


def test_a_loaded_vocoder_samples_through_the_core_and_counts_network_calls(vocoder_run):
    voc = load_vocoder(vocoder_run)
    mel = waveform_to_mel(torch.stack([torch.from_numpy(tone(f)) for f in (300.0, 900.0)]))
    out = voc.sample(mel, [3, 4], 4000)
    assert out.network_calls == 6 and out.x0["wave"].shape == (2, 1, 4000)  # ddpm, 6 steps: one call a step
    assert torch.equal(voc.waveforms(out), voc(mel, [3, 4], 4000))
    ddim = voc.with_sample(sampler="ddim", steps=3)
    assert ddim.sample(mel, [3, 4], 4000).network_calls == 3 and ddim.config["sample"]["eta"] == 0.0
    assert voc.config["sample"]["sampler"] == "ddpm" and voc.spec.grid.numel() == 7  # the cached one is unchanged
    assert ddim.denoiser is voc.denoiser
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        voc.with_sample(stepz=3)
    with pytest.raises(ValueError, match="needs its own Vocoder"):
        voc.with_sample(dtype="float64")


def test_audio_cli_samples_with_a_vocoder_checkpoint(vocoder_run, synth_dir, tmp_path):
    run_dir = tmp_path / "mel-run"
    audio = get_domain("audio")
    cfg = resolve_config(audio, None, [f"data.path={synth_dir}", "data.label_pattern=", "data.seconds=0.5",
                                       "model.channels=8", "model.mults=[1,2]", "model.res_blocks=1", "train.steps=2",
                                       "train.batch_size=4", "train.ckpt_every=2"])
    train(audio, cfg, run_dir, device="cpu", progress=False)
    out = tmp_path / "vocoded"
    run_cli("sample", run_dir, "-n", "3", "--steps", "2", "--batch-size", "2", "--out", out,
            f"sample.vocoder={vocoder_run}", "sample.spectrograms=false", "--no-progress")
    wavs = sorted(out.glob("*.wav"))
    assert [p.name for p in wavs] == [f"{i:08d}.wav" for i in range(3)]
    for p in wavs:
        wave, rate = sf.read(str(p))
        assert rate == RATE and wave.shape == (4000,) and np.isfinite(wave).all()
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["config"]["sample"]["vocoder"] == str(vocoder_run)
    # a folder that is not a vocoder checkpoint
    with pytest.raises(InputError, match="checkpoint is for domain 'audio', not 'vocoder'"):
        sample(run_dir, tmp_path / "x", n=1, steps=2, overrides=[f"sample.vocoder={run_dir}"], device="cpu",
               progress=False)


# ----------------------------------------------------------------------------- real speech


@pytest.mark.skipif(fsdd_root() is None, reason="FSDD not found (set SCIFFUSION_FSDD or place it at "
                                                 "../shared/data/fsdd/recordings)")
def test_fsdd_copy_synthesis_with_a_briefly_trained_vocoder(tmp_path):
    domain = get_domain("vocoder")
    cfg = resolve_config(domain, None, [*TINY, "train.steps=10", "train.batch_size=8", "train.log_every=5",
                                        "train.ckpt_every=10", "data.segment_seconds=0.125"])
    res = train(domain, cfg, tmp_path / "run", device="cpu", progress=False)
    assert res.step == 10
    clips = tmp_path / "clips"
    clips.mkdir()
    real = sorted(Path(fsdd_root()).glob("*_jackson_0.wav"))[:2]
    for f in real:
        (clips / f.name).write_bytes(f.read_bytes())
    out = sample(tmp_path / "run", tmp_path / "out", n=2, overrides=[f"sample.input={clips}"], device="cpu",
                 progress=False)
    assert out.files == 2
    objs = [domain.read(p) for p in sorted((tmp_path / "out").glob("*.wav"))]
    assert [o["source"] for o in objs] == [str(clips / f.name) for f in real]
    from sciffusion.core.checkpoint import load_checkpoint

    m = domain.metrics(objs, load_checkpoint(res.checkpoint).data_config)
    assert m["n_reference"] == 2 and m["duration_s"] == pytest.approx(1.0)
    assert all(np.isfinite(m[k]) for k in ("spectral_convergence", "lsd", "mcd"))
