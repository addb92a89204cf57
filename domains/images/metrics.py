"""Images evaluation: reference metrics between a known image and its reconstruction (PSNR, SSIM)
and the distribution metrics of generated images against real ones on the features of an
evaluation classifier trained here (``classifier.train_classifier``): FID, precision / recall,
IS, accuracy and per-class FID. The feature statistics come from ``sciffusion.core.features``.

Images are float tensors or arrays (N, C, H, W) in [-1, 1] (a single (C, H, W) image is
accepted by ``psnr`` / ``ssim``); numbers are returned as Python floats.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...core.features import (accuracy, as_float64, fid, inception_score, per_class_fid,
                                      per_class_fid_defined)

__all__ = ["psnr", "ssim", "precision_recall", "evaluate_images"]


def _pair(ref, est) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.as_tensor(as_float64(ref))
    e = torch.as_tensor(as_float64(est))
    if r.shape != e.shape:
        raise ValueError(f"shape mismatch: {tuple(r.shape)} vs {tuple(e.shape)}")
    if r.dim() == 3:
        r, e = r[None], e[None]
    if r.dim() != 4 or r.numel() == 0:
        raise ValueError(f"need (N, C, H, W) or (C, H, W) images, got shape {tuple(r.shape)}")
    return r, e


# ------------------------------------------------------------------------------------ reference
def psnr(ref, est, data_range: float = 2.0) -> float:
    """PSNR in dB, 10 log10(data_range^2 / MSE) with the MSE over each image's C*H*W values, then the
    mean over images (range 2 for images in [-1, 1]). An image equal to its reference gives +inf
    (and so does the mean)."""
    r, e = _pair(ref, est)
    mse = ((r - e) ** 2).flatten(1).mean(dim=1)
    with np.errstate(divide="ignore"):
        vals = 10.0 * np.log10(data_range ** 2 / mse.numpy())
    return float(np.mean(vals))


def _gauss(size: int, sigma: float) -> torch.Tensor:
    """Normalised Gaussian weights exp(-d^2 / (2 sigma^2)) at offsets d from the window's centre (size - 1) / 2."""
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def ssim(ref, est, data_range: float = 2.0, *, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM (Wang et al. 2004): SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (k1 L)^2, C2 = (k2 L)^2, L = ``data_range``; local means / (population) variances /
    covariance under an 11 x 11 Gaussian window (sigma 1.5), at every position where the window
    lies inside the image (valid region; no padding), averaged over that region and the channels
    of each image, then over images. Matches ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L)``.

    Images smaller than the window along an axis use a window of the image's size along that axis
    (Gaussian weights, same sigma, centred; even sizes centred between pixels), so e.g. an 8 x 8
    image gets a single 8 x 8 window: one global Gaussian-weighted SSIM per channel."""
    r, e = _pair(ref, est)
    n, c, h, w = r.shape
    sh, sw = min(win_size, h), min(win_size, w)
    gh, gw = _gauss(sh, sigma), _gauss(sw, sigma)

    def filt(z: torch.Tensor) -> torch.Tensor:            # separable valid weighted mean
        z = z.reshape(n * c, 1, h, w)
        z = F.conv2d(z, gh.view(1, 1, sh, 1))
        return F.conv2d(z, gw.view(1, 1, 1, sw))

    mx, my = filt(r), filt(e)
    vx = filt(r * r) - mx * mx
    vy = filt(e * e) - my * my
    cxy = filt(r * e) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.reshape(n, -1).mean(dim=1).mean())


# -------------------------------------------------------------------------- precision / recall
def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0, None)


def _knn_radii2(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Squared distance of each row of ``x`` to its k-th nearest other row of ``x``."""
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d = _sq_dists(x[i:i + chunk], x)
        d[np.arange(d.shape[0]), np.arange(i, i + d.shape[0])] = -1.0   # itself sorts first
        out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]
    return out


def _covered(q: np.ndarray, centres: np.ndarray, radii2: np.ndarray, chunk: int) -> np.ndarray:
    """Whether each row of ``q`` lies within at least one ball (centre, radius) (<=)."""
    out = np.empty(len(q), dtype=bool)
    for i in range(0, len(q), chunk):
        out[i:i + chunk] = (_sq_dists(q[i:i + chunk], centres) <= radii2[None]).any(axis=1)
    return out


def precision_recall(gen_features, ref_features, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of (N, D) generated against
    (M, D) reference features: each reference feature's ball has the radius of its k-th nearest
    neighbour among the other reference features; precision = share of generated features inside
    at least one reference ball. Recall swaps the roles: share of reference features inside at
    least one generated ball (radii from the generated set). Both in [0, 1], higher is better.
    Needs more than ``k`` features in each set. Returns (precision, recall)."""
    g, r = as_float64(gen_features), as_float64(ref_features)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) features, got {g.shape} and {r.shape}")
    if k < 1 or len(g) <= k or len(r) <= k:
        raise ValueError(f"k = {k} needs more than k features in each set, got {len(g)} and {len(r)}")
    precision = float(_covered(g, r, _knn_radii2(r, k, chunk), chunk).mean())
    recall = float(_covered(r, g, _knn_radii2(g, k, chunk), chunk).mean())
    return precision, recall


# ---------------------------------------------------------------------------------- protocol
def evaluate_images(classifier, gen, ref, *, gen_labels=None, ref_labels=None, k: int = 3) -> dict:
    """Generated images ``gen`` (N, C, H, W) against real reference images ``ref`` (M, C, H, W), on
    one evaluation classifier (``classifier.ImageClassifier``). Keys:

    - ``n``: number of generated images.
    - ``fid``: FID between the classifier features of ``gen`` and ``ref`` (lower is better; 0 for
      identical statistics).
    - ``precision``, ``recall``: improved precision / recall with ``k`` nearest neighbours on the
      same features (``precision_recall``): fidelity and coverage, in [0, 1], higher is better.
      Left out when either set has ``k`` or fewer images.
    - ``is`` (label classifiers only): Inception Score of the generated images' class
      probabilities, between 1 and the number of classes, higher is better.
    - ``accuracy`` (label classifiers, with ``gen_labels``): share of generated images the
      classifier assigns to the class they were generated for.
    - ``fid_class`` (with ``gen_labels`` and ``ref_labels``, when every generated class has >= 2
      images on both sides): mean over the generated classes of the per-class FID.

    A ``"rotation"`` classifier's probabilities are over transforms, not classes, so ``is`` and
    ``accuracy`` are never reported for it."""
    gf, glog = classifier.features_and_logits(gen)
    rf, _ = classifier.features_and_logits(ref)
    n = int(gf.shape[0])
    if gen_labels is not None and len(gen_labels) != n:
        raise ValueError(f"{n} generated images but {len(gen_labels)} gen_labels")
    if ref_labels is not None and len(ref_labels) != rf.shape[0]:
        raise ValueError(f"{rf.shape[0]} reference images but {len(ref_labels)} ref_labels")
    out = {"n": n, "fid": fid(gf, rf)}
    if n > k and rf.shape[0] > k:
        out["precision"], out["recall"] = precision_recall(gf, rf, k=k)
    if classifier.kind == "labels":
        out["is"] = inception_score(glog, logits=True)
        if gen_labels is not None:
            out["accuracy"] = accuracy(glog, as_float64(gen_labels).astype(np.int64))
    if gen_labels is not None and ref_labels is not None:
        gl, rl = as_float64(gen_labels).astype(np.int64), as_float64(ref_labels).astype(np.int64)
        if per_class_fid_defined(gl, rl):
            out["fid_class"] = per_class_fid(gf, gl, rf, rl)
    return out
