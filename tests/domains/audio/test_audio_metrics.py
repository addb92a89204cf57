"""Audio metrics: unit checks on synthetic features/probabilities/waveforms, and validation of the
whole DiffWave-style protocol on real speech (FSDD): the evaluation classifier, trained once per
session on the train split, must call the test split near-perfect and noise / corrupted clips bad.

Numbers measured on the 2-core CPU VM (classifier: 800 steps, seed 0, about 30 s) are stated next
to each threshold; thresholds leave a margin of 2-5x."""

import math

import numpy as np
import pytest
import torch
import torchaudio

from sciffusion.domains.audio import data as D
from sciffusion.domains.audio import metrics as M
from sciffusion.domains.audio.classifier import load_classifier, train_classifier
from sciffusion.domains.audio.mel import DEFAULT_MEL, MelConfig, MelConfigMismatch, mel_to_waveform, waveform_to_mel

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ feature metrics
def test_fid_matches_closed_form_and_is_robust():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    # diagonal: sum (sqrt a - sqrt b)^2 = 1 + 1 + 0, plus |mu1 - mu2|^2 = 5
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0, abs=1e-9)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    x = rng.normal(size=(4000, 8))
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert M.fid(x[:2000], x[2000:]) < 0.05
    assert M.fid(x + 1.0, x) == pytest.approx(8.0, rel=1e-6)
    assert M.fid(x[:2000], x[2000:] * 2) == pytest.approx(8.0, rel=0.1)  # 8 * (2 - 1)^2
    low_rank = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 16))  # singular covariances
    d = M.fid(low_rank, rng.normal(size=(60, 16)))
    assert math.isfinite(d) and d > 0
    assert M.fid(x[:100], x[100:300]) == pytest.approx(M.fid(x[100:300], x[:100]), rel=1e-8)
    labels = np.repeat([0, 1], 1000)
    assert M.per_class_fid(x[:2000], labels, x[2000:], labels) < 0.1


def test_probability_scores():
    eye = np.eye(10)[np.repeat(np.arange(10), 20)]
    assert M.inception_score(eye) == pytest.approx(10.0, rel=1e-6)
    assert M.inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert M.inception_score(np.eye(10)[np.zeros(50, int)]) == pytest.approx(1.0)  # mode collapse
    assert M.modified_inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert M.modified_inception_score(eye) > 1e5  # confident and diverse
    assert M.am_score(eye, eye) == pytest.approx(0.0, abs=1e-6)
    assert M.am_score(np.full((50, 10), 0.1), eye) == pytest.approx(math.log(10), rel=1e-6)
    logits = torch.log(torch.tensor(eye) * 0.9 + 0.01)
    assert M.inception_score(logits, logits=True) == pytest.approx(M.inception_score(eye * 0.9 + 0.01), rel=1e-6)
    assert M.accuracy(eye, np.repeat(np.arange(10), 20)) == 1.0


def test_ndb_k():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 4))
    same = M.ndb_k(rng.normal(size=(1000, 4)), ref, k=20)
    moved = M.ndb_k(rng.normal(size=(1000, 4)) + 1.5, ref, k=20)
    assert same["ndb_k"] <= 0.15 and moved["ndb_k"] >= 0.5
    assert same["ref_share"].sum() == pytest.approx(1.0) and same["k"] == 20
    c1, c2 = M.kmeans(ref, 5, seed=3), M.kmeans(ref, 5, seed=3)
    assert np.array_equal(c1, c2)


# ------------------------------------------------------------------------ reconstruction metrics
def test_reconstruction_metrics():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / 8000
    x = 0.5 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(8000, generator=g)
    assert M.spectral_convergence(x, x) == 0.0
    assert M.log_spectral_distance(x, x) == 0.0 and M.mel_cepstral_distortion(x, x) == 0.0
    assert M.spectral_convergence(x, 0.5 * x) == pytest.approx(0.5, abs=1e-5)
    assert M.log_spectral_distance(x, 0.5 * x) == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert M.mel_cepstral_distortion(x, 0.5 * x) < 1e-3  # c0 (level) is excluded
    assert M.spectral_convergence(x, -x) < 1e-6  # phase-blind
    noise = 0.5 * torch.randn(8000, generator=g)
    assert M.spectral_convergence(x, noise) > 0.9
    assert M.log_spectral_distance(x, noise) > 5 and M.mel_cepstral_distortion(x, noise) > 5
    batch = torch.stack([x, x])
    assert M.spectral_convergence(batch, torch.stack([x, 0.5 * x])) == pytest.approx(0.25, abs=1e-5)


# -------------------------------------------------------------------- protocol on real speech
@pytest.fixture(scope="session")
def fsdd_protocol(tmp_path_factory):
    """FSDD splits and the evaluation classifier trained once on the train split (about 30 s on
    one thread of the loaded 2-core VM), saved and reloaded through safetensors + JSON."""
    if D.fsdd_root() is None:
        pytest.skip("FSDD not found (../shared/data/fsdd/recordings or $SCIFFUSION_FSDD): no real audio")
    torch.set_num_threads(1)
    train, test = D.load_fsdd("train"), D.load_fsdd("test")
    clf = train_classifier(train, steps=800, seed=0)
    folder = clf.save(tmp_path_factory.mktemp("audio-classifier"))
    loaded = load_classifier(folder, expect_mel=DEFAULT_MEL)
    ref_f, ref_l = loaded.features_and_logits(train)
    return {"train": train, "test": test, "clf": loaded, "trained": clf, "folder": folder,
            "ref_f": ref_f, "ref_l": ref_l}


def score(p, waves, labels):
    f, lo = p["clf"].features_and_logits(waves)
    return {"fid": M.fid(f, p["ref_f"]), "is": M.inception_score(lo, logits=True),
            "mis": M.modified_inception_score(lo, logits=True), "am": M.am_score(lo, p["ref_l"], logits=True),
            "ndb_k": M.ndb_k(f, p["ref_f"], k=50)["ndb_k"], "acc": M.accuracy(lo, labels),
            "fid_class": M.per_class_fid(f, labels, p["ref_f"], p["train"].labels)}


def test_classifier_save_load(fsdd_protocol, tmp_path):
    p = fsdd_protocol
    x = p["test"].waves[:16]
    assert torch.equal(p["trained"].logits(x), p["clf"].logits(x))
    assert (p["folder"] / "classifier.safetensors").is_file() and (p["folder"] / "classifier.json").is_file()
    with pytest.raises(MelConfigMismatch, match="n_mels: 80 != 64"):
        load_classifier(p["folder"], expect_mel=MelConfig(n_mels=80))
    with pytest.raises(MelConfigMismatch, match="hop_length"):
        p["clf"].features_and_logits_from_mel(waveform_to_mel(x), MelConfig(hop_length=128))
    f1, _ = p["clf"].features_and_logits_from_mel(waveform_to_mel(x), DEFAULT_MEL)
    assert torch.allclose(f1, p["clf"].features(x))
    # variable-length input is cropped / padded to the classifier's 1 s
    assert p["clf"].predict([w[:3000] for w in x]).shape == (16,)


def test_test_split_scores_near_perfect(fsdd_protocol):
    p = fsdd_protocol
    s = score(p, p["test"].waves, p["test"].labels)
    # measured: acc 0.992, FID 0.42, IS 9.26, mIS 1.8e5, AM 0.076, NDB/K 0.04, FID-class 1.95
    assert s["acc"] >= 0.97, s
    assert s["fid"] < 1.5, s
    assert s["is"] > 8.0, s
    assert s["am"] < 0.3, s
    assert s["ndb_k"] <= 0.2, s


def test_noise_and_corruptions_score_badly(fsdd_protocol):
    p = fsdd_protocol
    x, y = p["test"].waves, p["test"].labels
    real = score(p, x, y)
    g = torch.Generator().manual_seed(0)
    low = torchaudio.functional.lowpass_biquad(torchaudio.functional.lowpass_biquad(x, 8000, 300.0), 8000, 300.0)
    cases = {"white noise": 0.1 * torch.randn(x.shape, generator=g),
             "clipped": torch.sign(x) * 0.5,
             "low-passed 300 Hz": low,
             "20 dB noise": x + 0.1 * x.std(dim=1, keepdim=True) * torch.randn(x.shape, generator=g)}
    # measured (FID / accuracy / IS / NDB/K / AM): white noise 150 / 0.10 / 1.01 / 0.72 / 14.6;
    # clipped 32 / 0.17 / 1.6 / 0.56 / 3.1; low-passed 111 / 0.10 / 1.10 / 0.74 / 8.7;
    # 20 dB noise 45 / 0.39 / 3.3 / 0.62 / 2.3 (real test split: 0.42 / 0.99 / 9.3 / 0.04 / 0.08)
    for name, w in cases.items():
        s = score(p, w, y)
        assert s["fid"] > 10 * max(real["fid"], 0.3), (name, s)
        assert s["acc"] < 0.6, (name, s)
        assert s["is"] < 4.0, (name, s)
        assert s["ndb_k"] >= 0.4, (name, s)
        assert s["am"] > 3 * real["am"], (name, s)
    # time reversal keeps the spectrum of each word: a weak corruption, still clearly worse
    # (measured FID 2.7, accuracy 0.78, IS 6.4)
    s = score(p, x.flip(-1), y)
    assert s["fid"] > 2 * real["fid"] and s["acc"] < 0.9, s


def test_griffin_lim_reconstruction_keeps_the_digits(fsdd_protocol):
    p = fsdd_protocol
    x, y = p["test"].waves[::2], p["test"].labels[::2]
    rec = mel_to_waveform(waveform_to_mel(x), n_iter=32, length=x.shape[1])
    out = M.evaluate_samples(p["clf"], rec, p["train"], gen_labels=y, ref_labels=p["train"].labels)
    # measured: accuracy 0.992, FID 0.45, IS 9.3 (the same 125 real clips: 1.000, 0.45, 9.4)
    assert out["accuracy"] >= 0.95 and out["fid"] < 2.0, out


def test_protocol_leaves_out_fid_class_when_a_class_has_one_clip():
    class Fake:  # features = the first 3 samples, logits = the next 2
        def features_and_logits(self, waves):
            x = torch.stack([torch.as_tensor(w, dtype=torch.float64)[:5] for w in waves])
            return x[:, :3], x[:, 3:]

    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(8, generator=g, dtype=torch.float64) for _ in range(12)]
    gen = [torch.randn(8, generator=g, dtype=torch.float64) for _ in range(5)]
    ref_labels = torch.tensor([0, 1] * 6)
    two_each = M.evaluate_samples(Fake(), gen[:4], ref, gen_labels=torch.tensor([0, 0, 1, 1]), ref_labels=ref_labels,
                                  ndb_bins=3)
    assert np.isfinite(two_each["fid_class"]) and "accuracy" in two_each
    one_of_class_1 = M.evaluate_samples(Fake(), gen, ref, gen_labels=torch.tensor([0, 0, 0, 0, 1]),
                                        ref_labels=ref_labels, ndb_bins=3)
    assert "fid_class" not in one_of_class_1 and "accuracy" in one_of_class_1
    with pytest.raises(ValueError, match="class 1: need >= 2"):
        M.per_class_fid(gen, torch.tensor([0, 0, 0, 0, 1]), ref, ref_labels)
