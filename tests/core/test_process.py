import math

import pytest
import torch

from sciffusion.core.process import (PROCESSES, KarrasVE, PolynomialVP, RectifiedFlow, TabulatedVP, VPCosine,
                                     VPLinear, check_t, process_from_config)

ALL = [VPCosine(), VPLinear(), PolynomialVP(), KarrasVE(), RectifiedFlow(),
       TabulatedVP.from_alphas_cumprod(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))]
IDS = [p.name for p in ALL]


def test_edm_polynomial_reproduces_reference_sigmas():
    # ../shared/reference/molecules.md: sigma at t = 100/250/500/750/900 of 1000
    p = PolynomialVP(timesteps=1000, power=2.0, precision=1e-5)
    t = torch.tensor([100, 250, 500, 750, 900], dtype=torch.float64) / 1000
    expected = torch.tensor([0.141, 0.348, 0.661, 0.899, 0.982], dtype=torch.float64)
    assert torch.allclose(p.sigma(t), expected, atol=5e-4)
    ends = p.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0] == pytest.approx(11.5, abs=0.05) and ends[1] == pytest.approx(-11.5, abs=0.05)


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_derivatives_match_autograd(p):
    # avoid the piecewise-linear kinks of tabulated processes: evaluate between grid points
    t = (torch.linspace(0.02, 0.97, 23, dtype=torch.float64) + 0.00037).requires_grad_(True)
    a, s = p.alpha(t), p.sigma(t)
    da = torch.autograd.grad(a.sum(), t)[0] if a.requires_grad else torch.zeros_like(t)  # constant alpha
    ds = torch.autograd.grad(s.sum(), t)[0]
    assert torch.allclose(p.d_alpha(t), da, rtol=1e-9, atol=1e-9)
    assert torch.allclose(p.d_sigma(t), ds, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_log_snr_is_consistent_and_invertible(p):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    lam = p.log_snr(t)
    assert torch.allclose(lam, 2 * (torch.log(p.alpha(t)) - torch.log(p.sigma(t))), atol=1e-9)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease in t"
    assert torch.allclose(p.t_of_log_snr(lam), t, atol=1e-9)
    assert torch.allclose(p.t_of_sigma_tilde(p.sigma_tilde(t)), t, atol=1e-9)


@pytest.mark.parametrize("p", [VPCosine(), VPLinear(), PolynomialVP()], ids=["cos", "lin", "poly"])
def test_variance_preserving(p):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


def test_endpoints():
    t0 = torch.tensor([0.0], dtype=torch.float64)
    for p in (VPCosine(), VPLinear(), KarrasVE(), RectifiedFlow()):
        assert float(p.sigma(t0)) == 0.0 and float(p.alpha(t0)) == 1.0
    assert float(KarrasVE(80).sigma(torch.tensor(1.0))) == 80.0
    assert float(VPCosine(log_snr_min=-15).log_snr(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(-15)


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_config_round_trip(p):
    q = process_from_config(p.config())
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    assert type(q) is type(p) and torch.allclose(q.sigma(t), p.sigma(t))
    assert set(PROCESSES) >= {p.name}


def test_bad_time_and_config_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_t(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="lie in"):
        check_t(torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="floating"):
        check_t(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown process"):
        process_from_config({"name": "nope"})
    with pytest.raises(ValueError, match="decreasing"):
        TabulatedVP([1.0, 2.0])


def test_ddpm_table_is_exactly_clean_at_t0_and_smooth_in_its_first_interval():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    p = TabulatedVP.from_alphas_cumprod(torch.cumprod(1 - betas, 0))
    assert float(p.sigma(torch.tensor(0.0, dtype=torch.float64))) == 0.0
    assert float(p.alpha(torch.tensor(0.001, dtype=torch.float64)) ** 2) == pytest.approx(1 - 1e-4, rel=1e-12)
    t = torch.tensor([2e-4, 5e-4, 9e-4], dtype=torch.float64, requires_grad=True)
    da = torch.autograd.grad(p.alpha(t).sum(), t)[0]
    ds = torch.autograd.grad(p.sigma(t).sum(), t)[0]
    assert torch.allclose(p.d_alpha(t), da, rtol=1e-8) and torch.allclose(p.d_sigma(t), ds, rtol=1e-8)
    lam = p.log_snr(t.detach())
    assert torch.allclose(p.t_of_log_snr(lam), t.detach(), rtol=1e-12)
