"""Images evaluation: PSNR / SSIM against scikit-image (the independent reference), precision /
recall against a brute-force implementation of the paper's definition, the evaluation classifier
(determinism, files, the rotation task) and the whole protocol on real data (scikit-learn's digits):
a classifier trained on the train split must call the held-out split near-perfect, uniform noise
bad, and blurred / noisy digits in between, worse with more blur / noise.

Figures measured on the 2-core CPU VM (classifier: 1000 steps, batch 64, seed 0, about 8 s on one
thread; test accuracy 0.99) against the 1617-image train split, as FID / precision / recall:
held-out 1.92 / 0.89 / 0.90, blur sigma 0.5 3.35 / 0.78 / 0.83, blur 1 17.1 / 0.07 / 0.11,
noise 0.3 2.58 / 0.50 / 0.92, noise 0.6 10.2 / 0.09 / 0.85, uniform noise 40.5 / 0.01 / 0.06.
Thresholds leave margins of about 1.2-3x."""

import json
import time

import numpy as np
import pytest
import skimage.data
import torch
from safetensors.torch import load_file, save_file
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sciffusion.core.io import InputError
from sciffusion.domains.images import classifier as C
from sciffusion.domains.images.metrics import evaluate_images, precision_recall, psnr, ssim

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    test = torch.arange(len(x)) % 10 == 0  # every 10th image held out
    return x[~test], y[~test], x[test], y[test]


@pytest.fixture(scope="module")
def digit_classifier(digits):
    xtr, ytr, _, _ = digits
    t = time.perf_counter()
    clf = C.train_classifier(xtr, ytr, steps=1000, batch_size=64, seed=0)
    return clf, time.perf_counter() - t


@pytest.fixture(scope="module")
def tiny_classifier(digits):
    xtr, ytr, _, _ = digits
    return C.train_classifier(xtr[:200], ytr[:200], steps=5, batch_size=16, seed=0, widths=(8, 16))


def _real_gray(n=3, size=96):
    """Crops of scikit-image's bundled photographs, scaled to [-1, 1], as (n, 1, size, size)."""
    im = skimage.data.camera().astype(np.float64) / 127.5 - 1.0
    return np.stack([im[None, 60 + 100 * i:60 + 100 * i + size, 150:150 + size] for i in range(n)])


def _real_rgb(size=80):
    im = skimage.data.astronaut().astype(np.float64) / 127.5 - 1.0  # (512, 512, 3)
    return np.stack([im[30:30 + size, 180:180 + size].transpose(2, 0, 1), im[300:300 + size, 40:40 + size].transpose(2, 0, 1)])


def _degrade(x, rng, noise=0.1, blur=1.0):
    y = gaussian_filter(x, sigma=(0, 0, blur, blur)) + noise * rng.normal(size=x.shape)
    return np.clip(y, -1, 1)


# ------------------------------------------------------------------------------- PSNR / SSIM
def _sk_mean(fn, ref, est, **kw):
    return float(np.mean([fn(r, e, **kw) for r, e in zip(ref, est)]))


def test_psnr_matches_skimage():
    rng = np.random.default_rng(0)
    cases = [(rng.uniform(-1, 1, (4, 3, 16, 20)), None), (_real_gray(), None), (_real_rgb(), None)]
    for ref, _ in cases:
        est = _degrade(ref, rng)
        want = _sk_mean(peak_signal_noise_ratio, ref, est, data_range=2.0)
        assert psnr(ref, est) == pytest.approx(want, abs=1e-5)
        assert psnr(torch.tensor(ref, dtype=torch.float64), torch.tensor(est)) == pytest.approx(want, abs=1e-5)
    ref = _real_gray(1)[0]  # a single (C, H, W) image
    est = np.clip(ref + 0.05 * rng.normal(size=ref.shape), -1, 1)
    assert psnr(ref, est) == pytest.approx(peak_signal_noise_ratio(ref, est, data_range=2.0), abs=1e-5)
    assert psnr(ref, est, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(ref, est, data_range=1.0), abs=1e-5)
    assert psnr(ref, ref) == float("inf")
    with pytest.raises(ValueError):
        psnr(ref, ref[:, :-1])


def test_psnr_on_digits_matches_skimage(digits):
    _, _, xt, _ = digits
    ref = xt[:20].double().numpy()
    est = np.clip(ref + 0.2 * np.random.default_rng(1).normal(size=ref.shape), -1, 1)
    want = _sk_mean(peak_signal_noise_ratio, ref, est, data_range=2.0)
    assert psnr(ref, est) == pytest.approx(want, abs=1e-5)


def _sk_ssim(ref, est, data_range=2.0):
    return _sk_mean(structural_similarity, ref, est, gaussian_weights=True, sigma=1.5,
                    use_sample_covariance=False, data_range=data_range, channel_axis=0)


def test_ssim_matches_skimage_random_and_real():
    rng = np.random.default_rng(2)
    ref = rng.uniform(-1, 1, (3, 3, 24, 31))
    for r in (ref, _real_gray(), _real_rgb()):
        for noise, blur in ((0.05, 0.5), (0.3, 1.5)):
            e = _degrade(r, rng, noise, blur)
            assert ssim(r, e) == pytest.approx(_sk_ssim(r, e), abs=1e-5)
    r = _real_gray(1)
    e = _degrade(r, rng)
    assert ssim(r, e, data_range=1.0) == pytest.approx(_sk_ssim(r, e, data_range=1.0), abs=1e-5)
    assert ssim(r[0], e[0]) == pytest.approx(ssim(r, e))  # one (C, H, W) image
    assert ssim(r, r) == pytest.approx(1.0, abs=1e-12)
    unrelated = rng.uniform(-1, 1, r.shape)
    assert abs(ssim(r, unrelated)) < 0.1


def _brute_ssim(ref, est, win=11, sigma=1.5, data_range=2.0):
    """Wang et al. 2004 at every valid window position, written out with explicit loops; the window
    shrinks to the image's size along an axis that is shorter than ``win``."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for r, e in zip(ref, est):
        per_channel = []
        for a, b in zip(r, e):
            h, w = a.shape
            sh, sw = min(win, h), min(win, w)
            gy = np.exp(-((np.arange(sh) - (sh - 1) / 2) ** 2) / (2 * sigma ** 2))
            gx = np.exp(-((np.arange(sw) - (sw - 1) / 2) ** 2) / (2 * sigma ** 2))
            wgt = np.outer(gy, gx) / np.outer(gy, gx).sum()
            m = []
            for i in range(h - sh + 1):
                for j in range(w - sw + 1):
                    pa, pb = a[i:i + sh, j:j + sw], b[i:i + sh, j:j + sw]
                    ma, mb = (wgt * pa).sum(), (wgt * pb).sum()
                    va, vb = (wgt * (pa - ma) ** 2).sum(), (wgt * (pb - mb) ** 2).sum()
                    cov = (wgt * (pa - ma) * (pb - mb)).sum()
                    m.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
            per_channel.append(np.mean(m))
        vals.append(np.mean(per_channel))
    return float(np.mean(vals))


def test_ssim_small_images_use_a_window_of_their_size(digits):
    rng = np.random.default_rng(3)
    r = rng.uniform(-1, 1, (2, 2, 14, 17))
    e = _degrade(r, rng, 0.2, 0.7)
    assert ssim(r, e) == pytest.approx(_brute_ssim(r, e), abs=1e-10)  # the brute force agrees at full size
    for shape in ((2, 1, 8, 8), (2, 3, 7, 5), (1, 1, 20, 6)):
        r = rng.uniform(-1, 1, shape)
        e = _degrade(r, rng, 0.2, 0.7)
        assert ssim(r, e) == pytest.approx(_brute_ssim(r, e), abs=1e-10), shape
        with pytest.raises(ValueError):  # scikit-image refuses these sizes
            structural_similarity(r[0, 0], e[0, 0], gaussian_weights=True, sigma=1.5, data_range=2.0)
    _, _, xt, _ = digits
    ref = xt[:30].double().numpy()
    est = np.clip(gaussian_filter(ref, sigma=(0, 0, 1, 1)), -1, 1)
    assert ssim(ref, est) == pytest.approx(_brute_ssim(ref, est), abs=1e-10)
    assert 0.2 < ssim(ref, est) < 0.99


# --------------------------------------------------------------------------- precision / recall
def _brute_pr(gen, ref, k):
    """Kynkaanniemi et al. 2019, by the definition: f(phi, Phi) = 1 when ||phi - phi'|| <=
    ||phi' - NN_k(phi')|| for some phi' in Phi (NN_k: k-th nearest other element of Phi)."""
    def radius(p, s):
        d = sorted(float(np.linalg.norm(p - q)) for q in s)
        return d[k]  # d[0] is p itself

    def f(p, s, radii):
        return any(np.linalg.norm(p - q) <= rq for q, rq in zip(s, radii))

    rr = [radius(p, ref) for p in ref]
    rg = [radius(p, gen) for p in gen]
    return float(np.mean([f(p, ref, rr) for p in gen])), float(np.mean([f(p, gen, rg) for p in ref]))


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(4)
    for k, (ng, nr, d) in ((1, (30, 40, 2)), (3, (50, 35, 5)), (5, (41, 60, 3))):
        gen = rng.normal(size=(ng, d)) * 1.3 + 0.4
        ref = rng.normal(size=(nr, d))
        got = precision_recall(gen, ref, k=k)
        assert got == pytest.approx(_brute_pr(gen, ref, k), abs=1e-12)
        assert precision_recall(gen, ref, k=k, chunk=7) == got  # chunking changes nothing
    with pytest.raises(ValueError):
        precision_recall(gen[:3], ref, k=3)


def test_precision_recall_on_two_gaussians():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2))
    p, r = precision_recall(a, b)
    assert p > 0.95 and r > 0.95  # measured 0.98 / 0.99
    assert precision_recall(a + 20.0, b) == (0.0, 0.0)
    p, r = precision_recall(a * 0.2, b)  # a collapsed generator: faithful but no coverage
    assert p > 0.95 and r < 0.5


# ------------------------------------------------------------------------------ the classifier
def test_training_is_deterministic(digits):
    xtr, ytr, _, _ = digits
    kw = dict(steps=5, batch_size=16, widths=(8, 16))
    a = C.train_classifier(xtr[:100], ytr[:100], seed=3, **kw).net.state_dict()
    b = C.train_classifier(xtr[:100], ytr[:100], seed=3, **kw).net.state_dict()
    c = C.train_classifier(xtr[:100], ytr[:100], seed=4, **kw).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_classifier_outputs(tiny_classifier, digits):
    _, _, xt, _ = digits
    clf = tiny_classifier
    assert clf.kind == "labels" and clf.image_shape == (1, 8, 8) and clf.label_names == [str(i) for i in range(10)]
    f, p = clf.features(xt), clf.probs(xt)
    assert f.shape == (len(xt), 16) and p.shape == (len(xt), 10) and f.dtype == torch.float64
    assert torch.allclose(p.sum(dim=1), torch.ones(len(xt), dtype=torch.float64))
    assert torch.allclose(clf.features(xt, batch_size=7), f, atol=1e-6)  # batching changes nothing
    with pytest.raises(ValueError, match="expects"):
        clf.features(torch.zeros(2, 1, 9, 8))
    names = C.train_classifier(xt[:20], torch.arange(20) % 3, steps=1, widths=(4,),
                               label_names=["a", "b", "c", "d"]).label_names
    assert names == ["a", "b", "c", "d"]


def test_save_load_round_trip(tiny_classifier, digits, tmp_path):
    _, _, xt, _ = digits
    tiny_classifier.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["classifier.json", "classifier.safetensors"]
    back = C.load_classifier(tmp_path / "clf")
    assert torch.equal(back.features(xt), tiny_classifier.features(xt))
    assert torch.equal(back.probs(xt), tiny_classifier.probs(xt))
    assert (back.kind, back.image_shape, back.label_names) == ("labels", (1, 8, 8), tiny_classifier.label_names)
    tiny_classifier.save(tmp_path / "clf")  # overwriting works
    assert torch.equal(C.load_classifier(tmp_path / "clf").features(xt), back.features(xt))


def _damage(folder, how):
    meta, weights = folder / "classifier.json", folder / "classifier.safetensors"
    if how == "no json":
        meta.unlink()
        return meta
    if how == "no weights":
        weights.unlink()
        return weights
    if how == "garbage json":
        meta.write_text("{not json")
        return meta
    if how == "wrong format":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": "something-else/1"}))
        return meta
    if how == "bad arch":
        m = json.loads(meta.read_text())
        del m["arch"]["widths"]
        meta.write_text(json.dumps(m))
        return meta
    if how == "truncated weights":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return weights
    if how == "garbage weights":
        weights.write_bytes(b"\x00" * 64)
        return weights
    state = load_file(str(weights))
    if how == "wrong shape":
        k = "head.weight"
        state[k] = torch.zeros(state[k].shape[0] + 1, state[k].shape[1])
    elif how == "missing tensor":
        del state["head.bias"]
    elif how == "non-finite":
        state["head.bias"] = torch.full_like(state["head.bias"], float("nan"))
    save_file(state, str(weights))
    return weights


@pytest.mark.parametrize("how", ["no json", "no weights", "garbage json", "wrong format", "bad arch", "truncated weights",
                                 "garbage weights", "wrong shape", "missing tensor", "non-finite"])
def test_damaged_classifier_files_raise_input_error_naming_the_file(tiny_classifier, tmp_path, how):
    folder = tiny_classifier.save(tmp_path / "clf")
    bad = _damage(folder, how)
    with pytest.raises(InputError) as e:
        C.load_classifier(folder)
    assert bad.name in str(e.value), str(e.value)


def test_rotation_classifier_on_unlabelled_images(digits):
    xtr, _, xt, yt = digits
    clf = C.train_classifier(xtr, None, steps=600, batch_size=64, seed=0)
    assert clf.kind == "rotation" and clf.label_names == C.ROTATION_NAMES_SQUARE
    t = torch.arange(len(xt)) % 4
    rotated = torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(xt, t)])
    acc = float((clf.predict(rotated) == t).double().mean())
    assert acc > 0.6, acc  # chance is 0.25; measured 0.86
    out = evaluate_images(clf, xt, xtr, gen_labels=yt, ref_labels=torch.arange(len(xtr)) % 10)
    assert "is" not in out and "accuracy" not in out
    assert {"fid", "precision", "recall", "fid_class"} <= set(out)
    with pytest.raises(ValueError):
        C.train_classifier(xtr[:10], None, steps=1, label_names=["a"])


def test_rotation_task_for_non_square_images(tmp_path):
    x = torch.rand(6, 2, 5, 3) * 2 - 1
    t = torch.tensor([0, 1, 2, 3, 1, 2])
    out = C._transform(x, t, square=False)
    want = [x[0], x[1].flip(-1).flip(-2), x[2].flip(-1), x[3].flip(-2), x[4].rot90(2, dims=(-2, -1)), x[5].flip(-1)]
    assert all(torch.equal(o, w) for o, w in zip(out, want))
    clf = C.train_classifier(x, steps=3, batch_size=4, widths=(4,))
    assert clf.kind == "rotation" and clf.label_names == C.ROTATION_NAMES_RECT and clf.image_shape == (2, 5, 3)
    back = C.load_classifier(clf.save(tmp_path / "r"))
    assert back.kind == "rotation" and torch.equal(back.features(x), clf.features(x))


def test_evaluate_images_keys(tiny_classifier, digits):
    xtr, ytr, xt, yt = digits
    out = evaluate_images(tiny_classifier, xt, xtr)
    assert set(out) == {"n", "fid", "precision", "recall", "is"}
    out = evaluate_images(tiny_classifier, xt, xtr, gen_labels=yt, ref_labels=ytr)
    assert set(out) == {"n", "fid", "precision", "recall", "is", "accuracy", "fid_class"}
    few = torch.tensor([int(torch.nonzero(yt == c)[0]) for c in range(5)])  # one image each of classes 0..4
    out = evaluate_images(tiny_classifier, xt[few], xtr, gen_labels=yt[few], ref_labels=ytr)
    assert "fid_class" not in out and "precision" in out  # a generated class with fewer than 2 images
    out = evaluate_images(tiny_classifier, xt[few[:3]], xtr, k=3)
    assert "precision" not in out and "recall" not in out and "fid" in out  # 3 images: no k = 3 neighbours
    with pytest.raises(ValueError):
        evaluate_images(tiny_classifier, xt, xtr, gen_labels=yt[:3])


# ------------------------------------------------------------------------------- the protocol
def test_protocol_on_digits(digits, digit_classifier):
    xtr, ytr, xt, yt = digits
    clf, seconds = digit_classifier
    test_acc = float((clf.predict(xt) == yt).double().mean())
    g = torch.Generator().manual_seed(1)

    def blur(s):
        return torch.tensor(gaussian_filter(xt.numpy(), sigma=(0, 0, s, s), mode="nearest"))

    def noisy(s):
        return (xt + s * torch.randn(xt.shape, generator=g)).clamp(-1, 1)

    sets = {"held-out": xt, "blur 0.5": blur(0.5), "blur 1": blur(1.0), "noise 0.3": noisy(0.3),
            "noise 0.6": noisy(0.6), "uniform": torch.rand(xt.shape, generator=g) * 2 - 1}
    res = {name: evaluate_images(clf, x, xtr, gen_labels=yt, ref_labels=ytr) for name, x in sets.items()}
    print(f"\ndigits classifier: {seconds:.1f} s, test accuracy {test_acc:.3f}")
    for name, r in res.items():
        print(f"  {name:10s} fid {r['fid']:7.3f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}  "
              f"is {r['is']:.2f}  accuracy {r['accuracy']:.3f}  fid_class {r['fid_class']:.2f}")
    fid = {k: r["fid"] for k, r in res.items()}
    prec = {k: r["precision"] for k, r in res.items()}

    assert test_acc > 0.9 and seconds < 60
    held = res["held-out"]
    assert held["fid"] < 5.0 and held["precision"] > 0.75 and held["recall"] > 0.75
    assert held["accuracy"] > 0.9 and held["is"] > 8.0
    assert prec["uniform"] < 0.05 and res["uniform"]["accuracy"] < 0.3
    # near-perfect < mild < strong < noise, with margins
    for mild, strong in (("blur 0.5", "blur 1"), ("noise 0.3", "noise 0.6")):
        assert fid["held-out"] * 1.2 < fid[mild], mild
        assert fid[mild] * 2.0 < fid[strong], strong
        assert fid[strong] * 1.5 < fid["uniform"], strong
        assert prec["held-out"] > prec[mild] + 0.05 and prec[mild] > prec[strong] + 0.05 and prec[strong] > prec["uniform"]
        assert res[strong]["is"] < held["is"]
