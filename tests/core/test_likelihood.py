import math

import pytest
import torch

from sciffusion.core.likelihood import bits_per_dim, log_likelihood
from sciffusion.core.noise import ExampleNoise
from sciffusion.core.process import RectifiedFlow, VPCosine
from sciffusion.core.spaces import ZeroMean
from sciffusion.core.state import State
from sciffusion.core.targets import (ExactDenoiser, ExactZeroMeanDenoiser, GaussianMixture, ZeroMeanGaussian)

T_MIN = 1e-3


def analytic(target, proc, x, t=T_MIN):
    tt = torch.full((x.shape[0],), t, dtype=torch.float64)
    return target.log_prob_t(x, proc.alpha(tt), proc.sigma(tt))


@pytest.mark.parametrize("proc", [VPCosine(), RectifiedFlow()], ids=lambda p: p.name)
def test_pf_ode_log_density_equals_the_mixture(proc):
    ring = GaussianMixture.ring()
    x = ring.sample(12, torch.Generator().manual_seed(0))
    x = torch.cat([x, torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)])  # off-data points too
    out = log_likelihood(ExactDenoiser(ring, proc), ring.state(x), t_min=T_MIN, rtol=1e-7, atol=1e-7)
    assert torch.allclose(out["log_prob"], analytic(ring, proc, x), atol=1e-4)
    assert torch.allclose(out["dof"], torch.full((14,), 2.0, dtype=torch.float64))


def test_zero_mean_point_set_density_lives_in_the_subspace():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(3, 5, 3, generator=g, dtype=torch.float64) * 1.5
    target = GaussianMixture(means, 0.4, space=ZeroMean())
    proc = VPCosine()
    x = target.sample(6, torch.Generator().manual_seed(2))
    out = log_likelihood(ExactDenoiser(target, proc), target.state(x), t_min=T_MIN, rtol=1e-7, atol=1e-7)
    assert out["dof"].tolist() == [12.0] * 6  # (N - 1) d
    assert torch.allclose(out["log_prob"], analytic(target, proc, x), atol=5e-3)
    # A translated copy has the same density: the model is translation invariant.
    shifted = target.state(x + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64))
    out2 = log_likelihood(ExactDenoiser(target, proc), shifted, t_min=T_MIN, rtol=1e-7, atol=1e-7)
    assert torch.allclose(out2["log_prob"], out["log_prob"], atol=1e-6)


def test_variable_size_graph_likelihood():
    proc = VPCosine()
    target = ZeroMeanGaussian(std=0.8, field="pos")
    sizes = [3, 6, 2]
    idx = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    pos = torch.randn(sum(sizes), 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = State({"pos": pos}, 3, index={"pos": idx}, spaces={"pos": ZeroMean()}).project()
    out = log_likelihood(ExactZeroMeanDenoiser(target, proc), x, t_min=T_MIN, rtol=1e-7, atol=1e-7)
    tt = torch.full((3,), T_MIN, dtype=torch.float64)
    expected = target.log_prob_t(x, proc.alpha(tt), proc.sigma(tt))
    assert out["dof"].tolist() == [6.0, 15.0, 3.0]
    assert torch.allclose(out["log_prob"], expected, atol=1e-3)


def test_hutchinson_is_unbiased():
    ring = GaussianMixture.ring()
    proc = VPCosine()
    n = 300
    x = ring.sample(1, torch.Generator().manual_seed(4)).expand(n, 2).clone()
    out = log_likelihood(ExactDenoiser(ring, proc), ring.state(x), t_min=T_MIN, divergence="hutchinson",
                         noise=ExampleNoise(range(n)))
    err = out["log_prob"] - analytic(ring, proc, x)
    stderr = float(err.std()) / math.sqrt(n)
    assert abs(float(err.mean())) < 4 * stderr + 1e-3, (float(err.mean()), stderr)


def test_bits_per_dim_and_errors():
    lp = torch.tensor([-math.log(2.0) * 10])
    assert bits_per_dim(lp, torch.tensor([5.0])).item() == pytest.approx(2.0)
    ring = GaussianMixture.ring()
    den = ExactDenoiser(ring, VPCosine())
    x = ring.state(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs noise"):
        log_likelihood(den, x, divergence="hutchinson")
    with pytest.raises(ValueError, match="divergence must be"):
        log_likelihood(den, x, divergence="approx")
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(den, x, t_min=0.5, t_max=0.2)
