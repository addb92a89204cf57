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
- ``accuracy``: classifier accuracy on class-conditional samples against the requested labels;
  ``confusion_matrix`` counts clips per (requested, heard) label pair, its trace over its sum is
  the accuracy and its rows give the accuracy per class.
- ``per_class_fid``: mean over classes of the FID between generated and reference clips of that class.

Numbers are returned as Python floats; inputs are tensors or arrays (converted to float64).
The feature / probability statistics are domain-agnostic and live in ``sciffusion.core.features``;
they are re-exported here under the same names.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...core.features import (accuracy, am_score, confusion_matrix, fid, frechet_distance, gaussian_stats, inception_score,
                                      kmeans, modified_inception_score, ndb_k, per_class_fid)
from ...core.features import per_class_fid_defined as _per_class_fid_defined

from .mel import DEFAULT_MEL, MelConfig, mel_filterbank, stft_magnitude

__all__ = ["gaussian_stats", "frechet_distance", "fid", "per_class_fid", "inception_score",
           "modified_inception_score", "am_score", "kmeans", "ndb_k", "accuracy", "confusion_matrix",
           "evaluate_samples",
           "spectral_convergence", "log_spectral_distance", "mel_cepstral_distortion"]

_EPS = 1e-12


def evaluate_samples(classifier, gen_waves, ref_waves, gen_labels=None, ref_labels=None,
                     ndb_bins: int = 50, seed: int = 0, gen_outputs=None) -> dict:
    """The whole protocol for generated clips against real reference clips, with one classifier:
    fid, is, mis, am, ndb_k (+ accuracy and fid_class when ``gen_labels`` are given; fid_class
    needs ``ref_labels`` and is left out when a generated class has fewer than 2 clips).
    ``gen_outputs``: the classifier's (features, logits) of ``gen_waves`` when the caller has them."""
    gf, gl = gen_outputs if gen_outputs is not None else classifier.features_and_logits(gen_waves)
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
