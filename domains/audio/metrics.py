"""Audio evaluation: DiffWave's protocol on classifier features / probabilities, and reference
metrics for vocoders (reconstruction of a known waveform).

Protocol (DiffWave, SC09; here any labelled set, e.g. FSDD): a classifier trained on real data
(``classifier.train_classifier``) gives features ``f`` (penultimate layer) and class probabilities
``p(y|x)`` for each generated clip; reference statistics come from real (training) clips.

- ``fid``: Frechet distance between Gaussian fits of generated and reference features.
- ``inception_score``: IS = exp(E_x KL(p(y|x) || p(y))), p(y) = mean of p(y|x) over the generated set.
- ``modified_inception_score``: mIS = exp(E_{x, x'} KL(p(y|x) || p(y|x'))) over all ordered pairs of
  generated clips (Gurumurthy et al. 2017): high when each clip is confident *and* clips differ.
- ``am_score``: AM = KL(p_ref(y) || p_gen(y)) + E_x H(p(y|x)), p_ref(y) = mean classifier
  probability over reference clips, p_gen(y) over generated clips (Zhou et al. 2018); lower is better.
- ``ndb_k``: NDB/K (Richardson & Weiss 2018): k-means (K bins) on reference features; each
  generated clip goes to its nearest centroid; a bin is statistically different when a two-sided
  two-proportion z-test on (reference share, generated share) rejects at ``alpha``;
  NDB/K = different bins / K (lower is better).
- ``accuracy``: classifier accuracy on class-conditional samples against the requested labels.
- ``per_class_fid``: mean over classes of the FID between generated and reference clips of that class.

Numbers are returned as Python floats; inputs are tensors or arrays (converted to float64).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm

from .mel import DEFAULT_MEL, MelConfig, mel_filterbank, stft_magnitude

__all__ = ["gaussian_stats", "frechet_distance", "fid", "per_class_fid", "inception_score",
           "modified_inception_score", "am_score", "kmeans", "ndb_k", "accuracy", "evaluate_samples",
           "spectral_convergence", "log_spectral_distance", "mel_cepstral_distortion"]

_EPS = 1e-12


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _probs(p_or_logits, logits: bool) -> np.ndarray:
    x = _np(p_or_logits)
    if logits:
        x = x - x.max(axis=1, keepdims=True)
        x = np.exp(x)
        x /= x.sum(axis=1, keepdims=True)
    return np.clip(x, _EPS, 1.0)


# ------------------------------------------------------------------------------------------- FID
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N-1) of (N, D) features, float64."""
    f = _np(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    The trace of (S1 S2)^{1/2} equals that of (A S2 A)^{1/2} with A = S1^{1/2}, a symmetric PSD
    matrix, so it is computed from symmetric eigen-decompositions with negative round-off
    eigenvalues clipped to 0: no complex parts, stable for singular covariances. Clipped at >= 0."""
    mu1, mu2, s1, s2 = _np(mu1), _np(mu2), _np(sigma1), _np(sigma2)
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(d, 0.0)


def fid(gen_features, ref_features) -> float:
    """Frechet distance between Gaussian fits of generated and reference (N, D) features."""
    return frechet_distance(*gaussian_stats(gen_features), *gaussian_stats(ref_features))


def _per_class_fid_defined(gen_labels, ref_labels) -> bool:
    """Whether every class present in ``gen_labels`` has >= 2 clips on both sides."""
    gl, rl = np.asarray(gen_labels), np.asarray(ref_labels)
    return all((gl == c).sum() >= 2 and (rl == c).sum() >= 2 for c in np.unique(gl))


def per_class_fid(gen_features, gen_labels, ref_features, ref_labels) -> float:
    """Mean over the classes present in ``gen_labels`` of the FID between that class's generated
    and reference features (classes need >= 2 clips on each side)."""
    g, r = _np(gen_features), _np(ref_features)
    gl, rl = np.asarray(gen_labels), np.asarray(ref_labels)
    vals = []
    for c in np.unique(gl):
        if (gl == c).sum() < 2 or (rl == c).sum() < 2:
            raise ValueError(f"class {c}: need >= 2 generated and >= 2 reference clips")
        vals.append(fid(g[gl == c], r[rl == c]))
    return float(np.mean(vals))


# --------------------------------------------------------------------------- probability scores
def inception_score(probs, logits: bool = False) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))); between 1 and the number of classes."""
    p = _probs(probs, logits)
    py = p.mean(axis=0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(py))).sum(axis=1).mean()))


def modified_inception_score(probs, logits: bool = False) -> float:
    """mIS = exp(E_{i,j} KL(p(y|x_i) || p(y|x_j))), mean over all N^2 ordered pairs (i = j gives 0)."""
    p = _probs(probs, logits)
    lp = np.log(p)
    kl = (p * lp).sum(axis=1)[:, None] - p @ lp.T
    return float(np.exp(kl.mean()))


def am_score(probs, ref_probs, logits: bool = False) -> float:
    """AM = KL(p_ref(y) || p_gen(y)) + E_x H(p(y|x)); ``ref_probs`` from real reference clips."""
    p, r = _probs(probs, logits), _probs(ref_probs, logits)
    pg, pr = p.mean(axis=0), r.mean(axis=0)
    kl = float((pr * (np.log(pr) - np.log(pg))).sum())
    ent = float(-(p * np.log(p)).sum(axis=1).mean())
    return kl + ent


def accuracy(probs_or_logits, labels) -> float:
    """Share of clips whose arg-max class equals the requested label."""
    x = _np(probs_or_logits)
    return float((x.argmax(axis=1) == np.asarray(labels)).mean())


# ------------------------------------------------------------------------------------------ NDB/K
def kmeans(x, k: int, seed: int = 0, n_iter: int = 50) -> np.ndarray:
    """Centroids (k, D) by Lloyd's algorithm from a k-means++ start (seeded, deterministic)."""
    x = _np(x)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means with {k} bins needs >= {k} points, got {n}")
    rng = np.random.default_rng(seed)
    cent = [x[rng.integers(n)]]
    d2 = ((x - cent[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        tot = d2.sum()
        i = rng.integers(n) if tot <= 0 else rng.choice(n, p=d2 / tot)
        cent.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    c = np.stack(cent)
    for _ in range(n_iter):
        assign = _nearest(x, c)
        new = c.copy()
        for j in range(k):
            members = x[assign == j]
            if len(members):
                new[j] = members.mean(axis=0)
        if np.allclose(new, c):
            break
        c = new
    return c


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = (x ** 2).sum(axis=1)[:, None] - 2 * x @ c.T + (c ** 2).sum(axis=1)[None]
    return d.argmin(axis=1)


def ndb_k(gen_features, ref_features, k: int = 50, alpha: float = 0.05, seed: int = 0) -> dict:
    """NDB/K. Returns {"ndb": bins different, "k": K, "ndb_k": ndb / K, "ref_share", "gen_share"}."""
    g, r = _np(gen_features), _np(ref_features)
    c = kmeans(r, k, seed=seed)
    pr = np.bincount(_nearest(r, c), minlength=k) / len(r)
    pg = np.bincount(_nearest(g, c), minlength=k) / len(g)
    nr, ng = len(r), len(g)
    pooled = (pr * nr + pg * ng) / (nr + ng)
    se = np.sqrt(np.clip(pooled * (1 - pooled) * (1 / nr + 1 / ng), 1e-300, None))
    z = np.abs(pr - pg) / se
    ndb = int((z > norm.ppf(1 - alpha / 2)).sum())
    return {"ndb": ndb, "k": k, "ndb_k": ndb / k, "ref_share": pr, "gen_share": pg}


def evaluate_samples(classifier, gen_waves, ref_waves, gen_labels=None, ref_labels=None,
                     ndb_bins: int = 50, seed: int = 0) -> dict:
    """The whole protocol for generated clips against real reference clips, with one classifier:
    fid, is, mis, am, ndb_k (+ accuracy and fid_class when ``gen_labels`` are given; fid_class
    needs ``ref_labels`` and is left out when a generated class has fewer than 2 clips)."""
    gf, gl = classifier.features_and_logits(gen_waves)
    rf, rl = classifier.features_and_logits(ref_waves)
    out = {"n": int(gf.shape[0]), "fid": fid(gf, rf), "is": inception_score(gl, logits=True),
           "mis": modified_inception_score(gl, logits=True), "am": am_score(gl, rl, logits=True),
           "ndb_k": ndb_k(gf, rf, k=min(ndb_bins, rf.shape[0]), seed=seed)["ndb_k"]}
    if gen_labels is not None:
        out["accuracy"] = accuracy(gl, gen_labels)
        if ref_labels is not None and _per_class_fid_defined(gen_labels, ref_labels):
            out["fid_class"] = per_class_fid(gf, gen_labels, rf, ref_labels)
    return out


# --------------------------------------------------------------------- reconstruction (vocoders)
def _pair(ref, est) -> tuple[torch.Tensor, torch.Tensor]:
    ref = torch.as_tensor(ref, dtype=torch.float32)
    est = torch.as_tensor(est, dtype=torch.float32)
    if ref.shape[:-1] != est.shape[:-1]:
        raise ValueError(f"shape mismatch: {tuple(ref.shape)} vs {tuple(est.shape)}")
    n = min(ref.shape[-1], est.shape[-1])
    return ref[..., :n], est[..., :n]


def spectral_convergence(ref, est, cfg: MelConfig = DEFAULT_MEL) -> float:
    """SC = || |S_ref| - |S_est| ||_F / || |S_ref| ||_F, with S the STFT of ``cfg`` (n_fft, hop,
    hann window) over the common length; a batch (B, L) is pooled per clip and averaged.
    0 is perfect; about 1 means no resemblance. Phase-blind."""
    r, e = _pair(ref, est)
    R, E = stft_magnitude(r, cfg), stft_magnitude(e, cfg)
    num = torch.linalg.vector_norm(R - E, dim=(-2, -1))
    den = torch.linalg.vector_norm(R, dim=(-2, -1)).clamp_min(_EPS)
    return float((num / den).mean())


def log_spectral_distance(ref, est, cfg: MelConfig = DEFAULT_MEL, floor: float = 1e-5) -> float:
    """LSD in dB: mean over frames of sqrt(mean over frequency bins of
    (20 log10 max(|S_ref|, floor) - 20 log10 max(|S_est|, floor))^2); averaged over a batch."""
    r, e = _pair(ref, est)
    R = 20 * torch.log10(stft_magnitude(r, cfg).clamp_min(floor))
    E = 20 * torch.log10(stft_magnitude(e, cfg).clamp_min(floor))
    return float(((R - E) ** 2).mean(dim=-2).sqrt().mean())


def mel_cepstral_distortion(ref, est, cfg: MelConfig = DEFAULT_MEL, n_coeffs: int = 13, floor: float = 1e-5) -> float:
    """MCD in dB without time warping (the clips are aligned): mel cepstra
    c = DCT-II(orthonormal) over mel bands of ln max(fb^T |S|, floor) (magnitude mel spectrum of
    ``cfg``'s filterbank), coefficients 1..n_coeffs (c0, the level, is excluded);
    MCD = mean over frames of (10 / ln 10) * sqrt(2 * sum_d (c_ref,d - c_est,d)^2)."""
    r, e = _pair(ref, est)
    fb = mel_filterbank(cfg)
    n = cfg.n_mels
    k = torch.arange(n, dtype=torch.float64)
    dct = torch.cos(math.pi / n * (k[None, :] + 0.5) * k[:, None]) * math.sqrt(2.0 / n)
    dct[0] /= math.sqrt(2.0)
    dct = dct[1:n_coeffs + 1].float()                                   # (n_coeffs, n_mels)

    def cep(w):
        m = torch.matmul(fb.T, stft_magnitude(w, cfg))                   # (..., n_mels, frames)
        return torch.matmul(dct, torch.log(m.clamp_min(floor)))          # (..., n_coeffs, frames)

    d = cep(r) - cep(e)
    return float((10.0 / math.log(10.0) * torch.sqrt(2.0 * (d ** 2).sum(dim=-2))).mean())
