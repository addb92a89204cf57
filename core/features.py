"""Domain-agnostic statistics of classifier outputs: features ``f`` (N, D) from an evaluation
network's penultimate layer and class probabilities ``p(y|x)`` (N, K). Every domain's evaluation
layer (audio, images, ...) takes these from here, so no domain imports another.

- ``fid``: Frechet distance between Gaussian fits of generated and reference features
  (Heusel et al. 2017).
- ``per_class_fid``: mean over classes of the FID between the generated and reference features of
  that class.
- ``inception_score``: IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016).
- ``modified_inception_score``: mIS = exp(E_{x, x'} KL(p(y|x) || p(y|x'))) (Gurumurthy et al. 2017).
- ``am_score``: AM = KL(p_ref(y) || p_gen(y)) + E_x H(p(y|x)) (Zhou et al. 2018); lower is better.
- ``ndb_k``: NDB/K (Richardson & Weiss 2018) on k-means bins of the reference features.
- ``accuracy``: share of samples whose arg-max class is the requested label.

Numbers are returned as Python floats; inputs are tensors or arrays (converted to float64).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm

__all__ = ["asked_labels", "confusion_matrix", "as_float64", "probabilities", "gaussian_stats", "psd_sqrt", "frechet_distance", "fid",
           "per_class_fid", "per_class_fid_defined", "inception_score", "modified_inception_score",
           "am_score", "accuracy", "kmeans", "nearest_centroid", "ndb_k"]

_EPS = 1e-12


def as_float64(x) -> np.ndarray:
    """A tensor (detached, moved to the CPU) or array-like as a float64 NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def probabilities(p_or_logits, logits: bool) -> np.ndarray:
    """(N, K) probabilities (softmax of the rows when ``logits``), clipped to [1e-12, 1] for logs."""
    x = as_float64(p_or_logits)
    if logits:
        x = x - x.max(axis=1, keepdims=True)
        x = np.exp(x)
        x /= x.sum(axis=1, keepdims=True)
    return np.clip(x, _EPS, 1.0)


# ------------------------------------------------------------------------------------------- FID
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N-1) of (N, D) features, float64."""
    f = as_float64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root V diag(sqrt(max(w, 0))) V^T of a symmetric PSD matrix (eigh of (A + A^T) / 2)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Heusel et al. 2017: d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    The trace of (S1 S2)^{1/2} equals that of (A S2 A)^{1/2} with A = S1^{1/2}, a symmetric PSD
    matrix, so it is computed from symmetric eigen-decompositions with negative round-off
    eigenvalues clipped to 0: no complex parts, stable for singular covariances. Clipped at >= 0."""
    mu1, mu2, s1, s2 = as_float64(mu1), as_float64(mu2), as_float64(sigma1), as_float64(sigma2)
    a = psd_sqrt(s1)
    m = a @ s2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(d, 0.0)


def fid(gen_features, ref_features) -> float:
    """FID (Heusel et al. 2017): ``frechet_distance`` of the Gaussian fits of (N, D) generated and reference features."""
    return frechet_distance(*gaussian_stats(gen_features), *gaussian_stats(ref_features))


def per_class_fid_defined(gen_labels, ref_labels) -> bool:
    """Whether every class present in ``gen_labels`` has >= 2 samples on both sides."""
    gl, rl = np.asarray(gen_labels), np.asarray(ref_labels)
    return all((gl == c).sum() >= 2 and (rl == c).sum() >= 2 for c in np.unique(gl))


def per_class_fid(gen_features, gen_labels, ref_features, ref_labels) -> float:
    """Mean over the classes present in ``gen_labels`` of the FID between that class's generated
    and reference features (classes need >= 2 samples on each side)."""
    g, r = as_float64(gen_features), as_float64(ref_features)
    gl, rl = np.asarray(gen_labels), np.asarray(ref_labels)
    vals = []
    for c in np.unique(gl):
        if (gl == c).sum() < 2 or (rl == c).sum() < 2:
            raise ValueError(f"class {c}: need >= 2 generated and >= 2 reference samples")
        vals.append(fid(g[gl == c], r[rl == c]))
    return float(np.mean(vals))


# --------------------------------------------------------------------------- probability scores
def inception_score(probs, logits: bool = False) -> float:
    """IS (Salimans et al. 2016) = exp(E_x KL(p(y|x) || p(y))), p(y) = mean p(y|x); between 1 and the class count."""
    p = probabilities(probs, logits)
    py = p.mean(axis=0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(py))).sum(axis=1).mean()))


def modified_inception_score(probs, logits: bool = False) -> float:
    """mIS (Gurumurthy et al. 2017) = exp(E_{i,j} KL(p(y|x_i) || p(y|x_j))) over all N^2 ordered pairs (i = j gives 0)."""
    p = probabilities(probs, logits)
    lp = np.log(p)
    kl = (p * lp).sum(axis=1)[:, None] - p @ lp.T
    return float(np.exp(kl.mean()))


def am_score(probs, ref_probs, logits: bool = False) -> float:
    """AM (Zhou et al. 2018) = KL(p_ref(y) || p_gen(y)) + E_x H(p(y|x)); ``ref_probs`` from real reference samples."""
    p, r = probabilities(probs, logits), probabilities(ref_probs, logits)
    pg, pr = p.mean(axis=0), r.mean(axis=0)
    kl = float((pr * (np.log(pr) - np.log(pg))).sum())
    ent = float(-(p * np.log(p)).sum(axis=1).mean())
    return kl + ent


def asked_labels(labels, names) -> torch.Tensor | None:
    """The class index (int64) each sample was generated for, from its label name in ``labels``;
    None unless every sample names one of the classifier's ``names``."""
    names = list(names or [])
    if not names or not all(lab is not None and lab in names for lab in labels):
        return None
    return torch.tensor([names.index(lab) for lab in labels], dtype=torch.long)


def confusion_matrix(asked, heard, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts of samples: row = the requested label, column = the label the
    classifier gave (arg-max class)."""
    out = np.zeros((int(n_classes), int(n_classes)), dtype=np.int64)
    np.add.at(out, (np.asarray(asked, dtype=np.int64), np.asarray(heard, dtype=np.int64)), 1)
    return out


def accuracy(probs_or_logits, labels) -> float:
    """Share of samples whose arg-max class equals the requested label: mean_i [argmax_y p(y|x_i) = y_i]."""
    x = as_float64(probs_or_logits)
    return float((x.argmax(axis=1) == np.asarray(labels)).mean())


# ------------------------------------------------------------------------------------------ NDB/K
def kmeans(x, k: int, seed: int = 0, n_iter: int = 50) -> np.ndarray:
    """Centroids (k, D) by Lloyd's algorithm from a k-means++ start (seeded, deterministic)."""
    x = as_float64(x)
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
        assign = nearest_centroid(x, c)
        new = c.copy()
        for j in range(k):
            members = x[assign == j]
            if len(members):
                new[j] = members.mean(axis=0)
        if np.allclose(new, c):
            break
        c = new
    return c


def nearest_centroid(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) of each row of ``x``."""
    d = (x ** 2).sum(axis=1)[:, None] - 2 * x @ c.T + (c ** 2).sum(axis=1)[None]
    return d.argmin(axis=1)


def ndb_k(gen_features, ref_features, k: int = 50, alpha: float = 0.05, seed: int = 0) -> dict:
    """NDB/K (Richardson & Weiss 2018): k-means (K bins) on reference features, each sample to its
    nearest centroid; a bin differs when a two-sided two-proportion z-test rejects at ``alpha``.
    Returns {"ndb": bins different, "k": K, "ndb_k": ndb / K, "ref_share", "gen_share"}."""
    g, r = as_float64(gen_features), as_float64(ref_features)
    c = kmeans(r, k, seed=seed)
    pr = np.bincount(nearest_centroid(r, c), minlength=k) / len(r)
    pg = np.bincount(nearest_centroid(g, c), minlength=k) / len(g)
    nr, ng = len(r), len(g)
    pooled = (pr * nr + pg * ng) / (nr + ng)
    se = np.sqrt(np.clip(pooled * (1 - pooled) * (1 / nr + 1 / ng), 1e-300, None))
    z = np.abs(pr - pg) / se
    ndb = int((z > norm.ppf(1 - alpha / 2)).sum())
    return {"ndb": ndb, "k": k, "ndb_k": ndb / k, "ref_share": pr, "gen_share": pg}
