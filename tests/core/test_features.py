"""core.features: the domain-agnostic feature / probability statistics shared by the domains.
FID against the closed form of the Frechet distance of two Gaussians (written here with SciPy's
general matrix square root, independently of the eigen-decomposition route of the module); IS at
its two ends."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from sciffusion.core import features as Fe


def _closed_form(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) with the principal square root of S1 S2."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2.0 * np.trace(root).real)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 6)) * [1, 2, 3, 0.5, 0.1, 4]
    assert Fe.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert Fe.fid(torch.tensor(x), x) == pytest.approx(0.0, abs=1e-8)  # tensors and arrays alike


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(1)
    for d in (1, 3, 8):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
        assert Fe.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-8, abs=1e-10)
    # diagonal: sum (sqrt a - sqrt b)^2 + ||mu1 - mu2||^2 = (1 + 1 + 0) + 5
    assert Fe.frechet_distance(np.zeros(3), np.diag([1.0, 4, 9]), np.array([1.0, 2, 0]), np.diag([4.0, 1, 9])) \
        == pytest.approx(7.0, abs=1e-9)


def test_fid_of_two_sampled_gaussians_approaches_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    exact = _closed_form(mu1, s1, mu2, s2)
    assert Fe.fid(x, y) == pytest.approx(exact, rel=0.02)
    # and the fitted statistics give exactly the closed form of the fitted Gaussians
    (m1, c1), (m2, c2) = Fe.gaussian_stats(x), Fe.gaussian_stats(y)
    assert Fe.fid(x, y) == pytest.approx(_closed_form(m1, c1, m2, c2), rel=1e-8)


def test_fid_is_finite_for_singular_covariances():
    rng = np.random.default_rng(3)
    low = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 10))
    d = Fe.fid(low, rng.normal(size=(50, 10)))
    assert math.isfinite(d) and d > 0
    with pytest.raises(ValueError):
        Fe.gaussian_stats(np.zeros((1, 3)))


def test_inception_score_bounds():
    k = 7
    assert Fe.inception_score(np.full((40, k), 1.0 / k)) == pytest.approx(1.0)
    confident = np.eye(k)[np.repeat(np.arange(k), 5)]  # one-hot, every class equally often
    assert Fe.inception_score(confident) == pytest.approx(k, rel=1e-6)
    assert Fe.inception_score(np.eye(k)[np.zeros(30, int)]) == pytest.approx(1.0)  # one class only
    logits = torch.log(torch.tensor(confident) * 0.9 + 0.1 / k)
    assert Fe.inception_score(logits, logits=True) == pytest.approx(Fe.inception_score(confident * 0.9 + 0.1 / k))


def test_accuracy_and_per_class_fid():
    p = np.eye(3)[[0, 1, 2, 2]]
    assert Fe.accuracy(p, [0, 1, 2, 0]) == 0.75
    x = np.random.default_rng(4).normal(size=(400, 3))
    lab = np.repeat([0, 1], 200)
    assert Fe.per_class_fid_defined(lab, lab) and not Fe.per_class_fid_defined([0, 1], lab)
    assert Fe.per_class_fid(x, lab, x, lab) == pytest.approx(0.0, abs=1e-8)


def test_asked_labels_index_the_classifiers_names_or_give_none():
    from sciffusion.core.features import asked_labels

    assert asked_labels(["7", "3", "7"], [str(i) for i in range(10)]).tolist() == [7, 3, 7]
    assert asked_labels(["7", None], ["7"]) is None and asked_labels(["x"], ["7"]) is None
    assert asked_labels(["7"], []) is None
