"""The audio domain's pictures, checked as images: per-clip spectrograms and the run's grid.png with
time (s) and frequency (Hz) axes whose mappings follow the mel formula and the STFT's hop, the
report's item for one WAV, and the classifier's per-class accuracy of an evaluation."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from sciffusion.core.registry import get_domain
from sciffusion.domains.audio.classifier import MelClassifier
from sciffusion.domains.audio.data import fsdd_root, load_fsdd
from sciffusion.domains.audio.mel import (MelConfig, frame_times, mel_filterbank, mel_frequencies, num_frames,
                                          waveform_to_mel)
from sciffusion.domains.audio.metrics import confusion_matrix
from sciffusion.domains.audio.output import frequency_ticks, spectrogram_png, write_wav

from .conftest import RATE, tone

NEEDS_FSDD = pytest.mark.skipif(fsdd_root() is None, reason="FSDD not found (../shared/data/fsdd/recordings or "
                                                            "$SCIFFUSION_FSDD): no digit classifier")
LABELS = ["high", "low", "mid", "sweep"]


@pytest.fixture(scope="module")
def domain():
    return get_domain("audio")


@pytest.fixture(scope="module")
def data_config():
    """A folder-trained model of 0.5 s tones (no FSDD clip beside its pictures, no classifier)."""
    return {"mel": MelConfig().to_dict(), "source": "folder", "samples": 4000, "frames": 63, "n_mels": 64,
            "label_names": LABELS, "label_counts": [9, 9, 9, 9]}


def tone_wavs(folder, n: int) -> list:
    """``n`` sciffusion WAVs of the test tones, seeds 0..n-1, as ``AudioDomain.write`` names them."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_wav(folder / f"{s:08d}.wav", tone(LABELS[s % 4], s), RATE, {"seed": s, "label": LABELS[s % 4]},
                      "sciffusion audio") for s in range(n)]


# ----------------------------------------------------------------------------- reading pictures
def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int64)


def runs(line: np.ndarray, min_len: int) -> int:
    """How many runs of True in ``line`` are at least ``min_len`` long."""
    edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int(((ends - starts) >= min_len).sum())


def panel_rows(path, min_width: int = 100, min_height: int = 60) -> list[int]:
    """Panels per row of a picture, top to bottom: on each pixel row, the spans of ink (not white)
    wider than any text or colour bar are panels; rows of pictures are bands of pixel rows that
    cross the same number of them."""
    ink = (pixels(path) < 235).any(axis=2)
    per_row = [runs(r, min_width) for r in ink]
    bands, start = [], 0
    for y in range(1, len(per_row) + 1):
        if y == len(per_row) or per_row[y] != per_row[start]:
            if per_row[start] and y - start >= min_height:
                bands.append(per_row[start])
            start = y
    return bands


def assert_readable(path, min_size=(640, 360)):
    img = pixels(path)
    h, w, _ = img.shape
    assert w >= min_size[0] and h >= min_size[1], (w, h)
    assert img.std() > 30
    assert len(np.unique(img.reshape(-1, 3) // 16, axis=0)) > 50  # a colour map, not a few flat tones


# ----------------------------------------------------------------------------- axes mappings
def htk_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def htk_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def test_band_centres_follow_the_htk_mel_formula():
    cfg = MelConfig()
    assert cfg.mel_scale == "htk"
    expected = htk_hz(np.linspace(htk_mel(cfg.f_min), htk_mel(cfg.f_max), cfg.n_mels + 2)[1:-1])
    got = mel_frequencies(cfg).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # each band's filter peaks at an FFT bin next to its centre (bands narrower than a bin: either side)
    fft_hz = np.arange(cfg.n_freqs) * cfg.sample_rate / cfg.n_fft
    assert np.abs(fft_hz[mel_filterbank(cfg).numpy().argmax(axis=0)] - got).max() < cfg.sample_rate / cfg.n_fft
    # a 1 kHz tone is loudest in the band whose centre is nearest 1 kHz
    t = np.arange(RATE) / RATE
    mel = waveform_to_mel(torch.tensor(0.5 * np.sin(2 * np.pi * 1000 * t), dtype=torch.float32), cfg)
    assert int(mel.mean(dim=1).argmax()) == int(np.abs(got - 1000).argmin())


def test_slaney_band_centres():
    cfg = MelConfig(mel_scale="slaney")

    def mel(hz):  # linear below 1 kHz (200/3 Hz per mel), logarithmic above
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(hz < 1000, hz / (200 / 3), 15 + np.log(np.maximum(hz, 1e-9) / 1000) / (np.log(6.4) / 27))

    centres = mel_frequencies(cfg).numpy()
    steps = np.diff(mel(np.concatenate([[cfg.f_min], centres, [cfg.f_max]])))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)  # equally spaced on the Slaney scale


def test_frequency_ticks_sit_where_their_frequency_is():
    for cfg in (MelConfig(), MelConfig(sample_rate=16000, f_max=8000.0, n_mels=80)):
        positions, labels = frequency_ticks(cfg)
        assert len(labels) >= 4 and labels[:3] == ["100 Hz", "500 Hz", "1 kHz"]
        hz = np.array([float(s.split()[0]) * (1000 if s.endswith("kHz") else 1) for s in labels])
        step = (htk_mel(cfg.f_max) - htk_mel(cfg.f_min)) / (cfg.n_mels + 1)
        exact = (htk_mel(hz) - htk_mel(cfg.f_min)) / step - 1  # band index of hz on the mel scale
        np.testing.assert_allclose(positions, exact, atol=0.01)


def test_frame_times_follow_hop_and_rate():
    cfg = MelConfig()
    t = frame_times(num_frames(RATE, cfg), cfg).numpy()
    np.testing.assert_allclose(t, np.arange(126) * 64 / 8000)
    assert t[-1] == pytest.approx(1.0)
    click = np.zeros(RATE, dtype=np.float32)
    click[3000] = 1.0  # 0.375 s: loudest in the frame centred there
    frame = int(waveform_to_mel(torch.tensor(click), cfg).mean(dim=0).argmax())
    assert abs(t[frame] - 0.375) <= cfg.hop_length / cfg.sample_rate / 2


# ----------------------------------------------------------------------------- pictures
def test_the_clip_picture_beside_each_wav(domain, data_config, tmp_path):
    cfg = domain.default_config()
    domain.template([7], cfg, data_config)  # sample.spectrograms is on by default
    mel = waveform_to_mel(torch.tensor(tone("sweep", 7)), MelConfig()).numpy()
    obj = {"wave": tone("sweep", 7), "sample_rate": RATE, "label": 3, "label_name": "sweep", "mel": mel}
    [(wav, png)] = domain.write([obj], [7], tmp_path, data_config)
    assert (wav.name, png.name) == ("00000007.wav", "00000007.png")
    assert_readable(png)
    assert panel_rows(png) == [1]
    ink = (pixels(png) < 235).any(axis=2)
    cols = np.flatnonzero(ink.mean(axis=0) > 0.5)  # the panel (and colour bar) columns
    rows = np.flatnonzero(ink.mean(axis=1) > 0.5)  # the panel's rows
    assert ink[:, :cols[0] - 3].sum() > 200         # tick labels and the frequency axis name left of it
    assert ink[rows[-1] + 3:, :].sum() > 200        # tick labels and the time axis name below it
    two = spectrogram_png(tmp_path / "two.png", [mel, mel], ["a", "b"], mel_config=MelConfig(), columns=2)
    assert panel_rows(two) == [2]
    with pytest.raises(ValueError, match="64 bands"):
        spectrogram_png(tmp_path / "bad.png", [mel[:32]], mel_config=MelConfig())


def test_run_picture_is_a_grid_of_the_first_clips(domain, data_config, tmp_path):
    cfg = domain.default_config()
    files = tone_wavs(tmp_path / "run", 20)
    ten = domain.run_picture(files[:10], tmp_path / "grid10.png", cfg, data_config)
    assert_readable(ten, (1000, 600))
    assert panel_rows(ten) == [4, 4, 2]
    many = domain.run_picture(files, tmp_path / "grid.png", cfg, data_config)
    assert panel_rows(many) == [4, 4, 4, 4]  # at most 16 panels
    off = dict(cfg, sample=dict(cfg["sample"], grid_picture=False))
    assert domain.run_picture(files, tmp_path / "none.png", off, data_config) is None
    assert not (tmp_path / "none.png").exists()


def test_report_item_of_a_wav(domain, data_config, tmp_path):
    [wav] = tone_wavs(tmp_path, 1)
    assert domain.report_item(wav, data_config) == {"kind": "audio", "path": wav, "picture": None,
                                                    "caption": "00000000: label high"}
    spectrogram_png(wav.with_suffix(".png"), [waveform_to_mel(torch.tensor(tone("high", 0)), MelConfig())])
    assert domain.report_item(wav, data_config)["picture"] == wav.with_suffix(".png")
    plain = tmp_path / "7_george_3.wav"  # not written by sciffusion: the label from the FSDD name
    sf.write(str(plain), tone("low", 0), RATE, subtype="PCM_16")
    item = domain.report_item(plain, data_config)
    assert item["caption"] == "7_george_3: label 7" and item["picture"] is None


# ----------------------------------------------------------------------------- evaluation
def test_confusion_matrix_counts_asked_against_heard():
    m = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert np.trace(m) / m.sum() == pytest.approx(4 / 6)


def test_no_classifier_or_no_labels_no_accuracy_picture(domain, data_config, tmp_path, monkeypatch):
    objs = [domain.read(p) for p in tone_wavs(tmp_path / "clips", 4)]
    assert domain.evaluation_pictures(objs, {"classifier": 0.0}, tmp_path, {}) == []
    assert domain.evaluation_pictures(objs, {}, tmp_path, data_config) == []  # not an FSDD model
    unlabelled = [dict(o, label_name=None) for o in objs]
    assert domain.evaluation_pictures(unlabelled, {}, tmp_path, {}) == []
    monkeypatch.setattr(type(domain), "classifier", lambda self, mel_cfg, clip: None)
    assert domain.evaluation_pictures(objs, {}, tmp_path, {}) == []
    assert not list(tmp_path.glob("*.png"))


@NEEDS_FSDD
def test_per_class_accuracy_of_an_evaluation(domain, tmp_path, monkeypatch):
    """FSDD test clips stand for generated ones (two per digit, one of them asked as the wrong
    digit): the picture comes from what ``metrics`` heard, without running the classifier again."""
    test = load_fsdd("test", length=RATE)
    names = test.label_names
    picks = [next(i for i in range(len(test)) if names[int(test.labels[i])] == d and i % 2 == k)
             for d in names for k in (0, 1)]
    objs = [{"wave": test.waves[i].numpy(), "sample_rate": RATE, "label_name": names[int(test.labels[i])]}
            for i in picks]
    objs[0]["label_name"] = "5"
    metrics = domain.metrics(objs, {})
    assert metrics["classifier"] == 1.0 and metrics["accuracy"] <= 19 / 20

    def rerun(*a, **k):
        raise AssertionError("the classifier ran again")

    for name in ("features_and_logits", "predict", "logits"):
        monkeypatch.setattr(MelClassifier, name, rerun)
    [png] = domain.evaluation_pictures(objs, metrics, tmp_path, {})
    assert png == tmp_path / "per_class_accuracy.png"
    assert_readable(png, (1000, 400))
    heard = domain._verdicts[1]
    asked = [names.index(o["label_name"]) for o in objs]
    assert np.mean(np.asarray(heard) == np.asarray(asked)) == pytest.approx(metrics["accuracy"])


# ----------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def shipped_clips(tmp_path_factory):
    """Three clips of a four from the shipped FSDD model through the Python API (two sampler steps)."""
    from sciffusion import api

    out = tmp_path_factory.mktemp("shipped") / "clips"
    api.sample("audio", out, n=3, steps=2, overrides=["sample.spectrograms=false", "sample.label=4"])
    return out


def test_shipped_model_run_writes_grid_png(shipped_clips):
    run = json.loads((shipped_clips / "run.json").read_text())
    assert run["picture"] == "grid.png"
    assert_readable(shipped_clips / "grid.png")
    assert panel_rows(shipped_clips / "grid.png") == [3]


@NEEDS_FSDD
def test_evaluating_the_shipped_clips_keeps_the_accuracy_picture(shipped_clips):
    from sciffusion import api

    metrics = api.evaluate("audio", [shipped_clips])
    assert metrics["classifier"] == 1.0 and "accuracy" in metrics
    assert_readable(shipped_clips / "evaluation" / "per_class_accuracy.png", (1000, 400))
