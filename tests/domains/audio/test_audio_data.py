"""Audio data and the frozen mel representation: folders of WAV/FLAC (labels, splits, resampling,
fixed/variable length, bad files), MelConfig (serialisation, mismatch detection), mel <-> waveform
(synthetic tones, rank-deficient filterbanks, Griffin-Lim on real FSDD clips)."""

import math
import wave

import numpy as np
import pytest
import soundfile as sf
import torch

from sciffusion.core.io import InputError
from sciffusion.domains.audio import data as D
from sciffusion.domains.audio.mel import (DEFAULT_MEL, MelConfig, MelConfigMismatch, mel_filterbank, mel_to_waveform,
                                          num_frames, stft_magnitude, waveform_to_mel)
from sciffusion.domains.audio.metrics import spectral_convergence

torch.set_num_threads(1)


def tone(freq, seconds=0.5, rate=8000, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, x, rate=8000, subtype=None):
    sf.write(str(path), x, rate, subtype=subtype)
    return path


@pytest.fixture
def fsdd_like(tmp_path):
    """A tiny FSDD-shaped folder: digits 0-2, speaker 'ann', takes 0-5, tones of varying length."""
    for d in range(3):
        for take in range(6):
            write(tmp_path / f"{d}_ann_{take}.wav", tone(300 + 100 * d, 0.2 + 0.1 * take))
    return tmp_path


# ------------------------------------------------------------------------------------------- data
def test_labels_split_and_fixed_length(fsdd_like):
    clips = D.load_audio_folder(fsdd_like, 8000, length=4000)
    assert len(clips) == 18 and clips.waves.shape == (18, 4000) and clips.label_names == ["0", "1", "2"]
    assert clips.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # take 5 lasts 0.7 s: centre-cropped to 4000 samples; take 0 lasts 0.2 s: zero-padded at the end
    i_long = [p.name for p in clips.files].index("0_ann_5.wav")
    i_short = [p.name for p in clips.files].index("0_ann_0.wav")
    assert clips.lengths[i_long] == 4000 and clips.mask[i_long].all()
    assert clips.lengths[i_short] == 1600 and clips.mask[i_short].sum() == 1600
    assert clips.mask[i_short, :1600].all() and clips.waves[i_short, 1600:].abs().max() == 0
    full = tone(300, 0.7)
    start = (len(full) - 4000) // 2
    assert torch.allclose(clips.waves[i_long], torch.from_numpy(full[start:start + 4000]), atol=1e-4)
    test = D.load_audio_folder(fsdd_like, 8000, split="test")  # FSDD rule: takes 0-4 are test
    train = D.load_audio_folder(fsdd_like, 8000, split="train")
    assert len(test) == 15 and len(train) == 3 and all(p.name.endswith("_5.wav") for p in train.files)
    assert isinstance(test.waves, list) and test.mask is None  # variable length
    assert sorted(w.numel() for w in test.waves)[:3] == [1600, 1600, 1600]


def test_centre_pad_and_generic_splits(fsdd_like):
    clips = D.load_audio_folder(fsdd_like, 8000, length=8000, pad="centre")
    m = clips.mask[0]
    first, last = int(m.nonzero()[0]), int(m.nonzero()[-1])
    assert first == (8000 - 1600) // 2 and last == first + 1599
    every = D.load_audio_folder(fsdd_like, 8000, split="test", split_rule=D.EveryKSplit(k=6, offset=0))
    assert len(every) == 3
    by_digit = D.GroupSplit(D.FSDD_PATTERN, "label", frozenset({"2"}))
    assert {p.name[0] for p in D.load_audio_folder(fsdd_like, 8000, split="test", split_rule=by_digit).files} == {"2"}
    unlabelled = D.load_audio_folder(fsdd_like, 8000, label_pattern=None)
    assert unlabelled.labels is None and len(unlabelled) == 18


def test_resampling_and_rate_check(tmp_path):
    write(tmp_path / "1_bob_0.wav", tone(440, 1.0, rate=16000), rate=16000)
    write(tmp_path / "2_bob_0.flac", tone(440, 1.0, rate=16000), rate=16000)
    clips = D.load_audio_folder(tmp_path, 8000, label_pattern=r"^(?P<label>\d)_")
    assert [w.numel() for w in clips.waves] == [8000, 8000]
    spec = torch.fft.rfft(clips.waves[0])
    assert abs(int(spec.abs().argmax()) - 440) <= 1  # 1 s at 8 kHz: bin = Hz
    with pytest.raises(InputError, match=r"1_bob_0\.wav: sample rate 16000 Hz, expected 8000 Hz"):
        D.load_audio_folder(tmp_path, 8000, label_pattern=r"^(?P<label>\d)_", resample=False)


def test_bad_files_raise_or_are_skipped(tmp_path):
    write(tmp_path / "0_a_0.wav", tone(300))
    (tmp_path / "1_a_0.wav").write_bytes(b"this is not audio at all")
    write(tmp_path / "2_a_0.wav", np.stack([tone(300), tone(400)], axis=1))
    with wave.open(str(tmp_path / "3_a_0.wav"), "wb") as w:  # valid header, no frames
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
    x = tone(300)
    x[10] = np.nan
    write(tmp_path / "4_a_0.wav", x, subtype="FLOAT")
    write(tmp_path / "readme_5.wav", tone(300))  # no label in the name
    reasons = {"1_a_0.wav": "not a readable audio file", "2_a_0.wav": "has 2 channels, mono audio required",
               "3_a_0.wav": "empty audio file", "4_a_0.wav": "NaN or infinite",
               "readme_5.wav": "does not match the label pattern"}
    for name, reason in reasons.items():
        with pytest.raises(InputError, match=reason) as e:
            D.load_audio_file(tmp_path / name, 8000) if name != "readme_5.wav" else \
                D.load_audio_folder(tmp_path, 8000, label_pattern=r"^(?P<label>\d)_")
        assert name in str(e.value)
    with pytest.raises(InputError, match="1_a_0.wav: not a readable"):  # the first bad file in order
        D.load_audio_folder(tmp_path, 8000, label_pattern=r"^(?P<label>\d|r)")
    clips = D.load_audio_folder(tmp_path, 8000, label_pattern=r"^(?P<label>\d)_", skip_bad=True)
    assert [p.name for p in clips.files] == ["0_a_0.wav"] and len(clips.skipped) == 5
    assert {name: r for name, r in ((n.split("/")[-1], r) for n, r in clips.skipped)}["4_a_0.wav"].startswith(
        "contains NaN")
    mixed = D.load_audio_file(tmp_path / "2_a_0.wav", 8000, downmix=True)
    assert mixed.shape == (4000,)


def test_labels_from_csv(tmp_path):
    write(tmp_path / "a.wav", tone(300))
    write(tmp_path / "b.flac", tone(500))
    (tmp_path / "labels.csv").write_text("file,label\na.wav,low\nb.flac,high\n")
    clips = D.load_audio_folder(tmp_path, 8000, labels_csv=tmp_path / "labels.csv", length=2000)
    assert clips.label_names == ["high", "low"] and clips.labels.tolist() == [1, 0]
    (tmp_path / "bad.csv").write_text("file,label\na.wav,low\nmissing.wav,high\n")
    with pytest.raises(InputError, match="missing.wav: file listed in the label CSV does not exist"):
        D.load_audio_folder(tmp_path, 8000, labels_csv=tmp_path / "bad.csv")
    (tmp_path / "noheader.csv").write_text("a.wav,low\n")
    with pytest.raises(InputError, match="noheader.csv: label CSV must start with the header"):
        D.load_audio_folder(tmp_path, 8000, labels_csv=tmp_path / "noheader.csv")
    with pytest.raises(InputError, match="audio folder not found"):
        D.load_audio_folder(tmp_path / "nope", 8000)


def test_fsdd_root_from_env(tmp_path, monkeypatch):
    (tmp_path / "recordings").mkdir()
    write(tmp_path / "recordings" / "0_x_0.wav", tone(300))
    monkeypatch.setenv("SCIFFUSION_FSDD", str(tmp_path))
    assert D.fsdd_root() == tmp_path / "recordings"
    monkeypatch.setenv("SCIFFUSION_FSDD", str(tmp_path / "recordings"))
    assert D.fsdd_root() == tmp_path / "recordings"


def test_fsdd_real_split():
    if D.fsdd_root() is None:
        pytest.skip("FSDD not found (../shared/data/fsdd/recordings or $SCIFFUSION_FSDD): no real audio")
    train, test = D.load_fsdd("train"), D.load_fsdd("test")
    assert len(train) == 2250 and len(test) == 250 and train.waves.shape == (2250, 8000)
    assert torch.bincount(test.labels).tolist() == [25] * 10
    assert {p.name for p in train.files}.isdisjoint(p.name for p in test.files)
    assert all(int(p.stem.split("_")[2]) < 5 for p in test.files)


# -------------------------------------------------------------------------------------------- mel
def test_mel_config_roundtrip_and_mismatch():
    cfg = MelConfig()
    assert MelConfig.from_dict(cfg.to_dict()) == cfg
    cfg.check_compatible(MelConfig.from_dict(cfg.to_dict()), "same")
    other = MelConfig(hop_length=128, n_mels=80)
    with pytest.raises(MelConfigMismatch, match=r"checkpoint vs data.*hop_length: 64 != 128.*n_mels: 64 != 80"):
        cfg.check_compatible(other, "checkpoint vs data")
    with pytest.raises(MelConfigMismatch, match="db_min"):
        cfg.check_compatible({**cfg.to_dict(), "db_min": -80.0})
    with pytest.raises(MelConfigMismatch, match="unknown MelConfig field"):
        MelConfig.from_dict({**cfg.to_dict(), "fmax_typo": 1})
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=5000.0)
    with pytest.raises(Exception):
        cfg.n_mels = 80  # frozen


def test_mel_shapes_range_and_levels():
    x = torch.from_numpy(tone(500, 1.0))
    mel = waveform_to_mel(x)
    assert mel.shape == (64, num_frames(8000, DEFAULT_MEL)) == (64, 126)
    assert mel.min() >= -1 and mel.max() <= 1
    assert waveform_to_mel(torch.stack([x, x])).shape == (2, 64, 126)
    # fixed dB constants: halving the amplitude lowers the mel by 6.02 dB everywhere above the floor
    quieter = waveform_to_mel(0.5 * x)
    busy = mel > -0.5
    shift_db = (mel - quieter)[busy].mean() * (DEFAULT_MEL.db_max - DEFAULT_MEL.db_min) / 2
    assert abs(float(shift_db) - 20 * math.log10(2)) < 0.05
    assert torch.equal(waveform_to_mel(torch.zeros(8000)), torch.full((64, 126), -1.0))  # floor at -100 dB


def test_tone_and_chirp_round_trip():
    torch.manual_seed(0)
    for sig in (tone(700, 1.0), (0.5 * np.sin(2 * np.pi * (200 + 1500 * np.arange(8000) / 8000) *
                                             np.arange(8000) / 8000)).astype(np.float32)):
        x = torch.from_numpy(sig)
        y = mel_to_waveform(waveform_to_mel(x), n_iter=32, length=8000)
        assert y.shape == (8000,) and torch.isfinite(y).all()
        sc = spectral_convergence(x, y)
        assert sc < 0.4, sc  # measured 0.12 (700 Hz tone) and 0.27 (200-3200 Hz chirp)
    y = mel_to_waveform(waveform_to_mel(torch.from_numpy(tone(700, 1.0))), n_iter=32, length=8000)
    assert abs(int(torch.fft.rfft(y).abs().argmax()) - 700) <= 15  # the pitch survives
    # deterministic for a seed
    m = waveform_to_mel(x)
    assert torch.equal(mel_to_waveform(m, n_iter=4, seed=3), mel_to_waveform(m, n_iter=4, seed=3))


@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")
def test_rank_deficient_filterbank_stays_finite():
    cfg = MelConfig(n_mels=128, f_min=0.0)  # 128 mels on 129 STFT bins: several empty filters
    fb = mel_filterbank(cfg)
    assert (fb.sum(dim=0) == 0).sum() > 0
    x = torch.from_numpy(tone(300, 0.5)) + 0.01 * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    y = mel_to_waveform(waveform_to_mel(x, cfg), cfg, n_iter=8)
    assert torch.isfinite(y).all() and y.abs().max() > 0
    with pytest.raises(ValueError, match="n_mels"):
        mel_to_waveform(waveform_to_mel(x), cfg)  # a 64-band mel given to a 128-band config


def test_griffin_lim_on_fsdd_clips():
    if D.fsdd_root() is None:
        pytest.skip("FSDD not found (../shared/data/fsdd/recordings or $SCIFFUSION_FSDD): no real audio")
    test = D.load_fsdd("test", length=None)
    scs = []
    for w in test.waves[::10]:  # 25 clips, variable length
        y = mel_to_waveform(waveform_to_mel(w), n_iter=32, length=w.numel())
        scs.append(spectral_convergence(w, y))
    # measured on this VM: mean 0.14, max 0.25 (32 Griffin-Lim iterations; all 250 test clips:
    # mean 0.14, median 0.13, max 0.29)
    assert np.mean(scs) < 0.22 and max(scs) < 0.4, scs
    assert stft_magnitude(test.waves[0], DEFAULT_MEL).shape[0] == 129


def test_clip_wave_checks_the_rate_and_mel_settings_and_names_the_clip():
    from sciffusion.domains.audio.mel import clip_wave

    ok = {"wave": np.ones(8, dtype=np.float64), "sample_rate": DEFAULT_MEL.sample_rate, "file": "a.wav"}
    w = clip_wave(ok, DEFAULT_MEL, "audio")
    assert w.dtype == torch.float32 and w.shape == (8,)
    with pytest.raises(MelConfigMismatch, match=r"vocoder: clip b\.wav is at 16000 Hz"):
        clip_wave({**ok, "file": "b.wav", "sample_rate": 16000}, DEFAULT_MEL, "vocoder")
    other = MelConfig(n_mels=DEFAULT_MEL.n_mels // 2).to_dict()
    with pytest.raises(MelConfigMismatch, match=r"audio: clip c\.wav vs the model"):
        clip_wave({**ok, "file": "c.wav", "mel_config": other}, DEFAULT_MEL, "audio")
