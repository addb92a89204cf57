import pytest
import torch

from sciffusion.core import parameterisation as P
from sciffusion.core.parameterisation import Denoiser, EDMPreconditioning, coefficients
from sciffusion.core.process import KarrasVE, PolynomialVP, RectifiedFlow, VPCosine, VPLinear
from sciffusion.core.state import State
from sciffusion.core.targets import ExactDenoiser, GaussianMixture

PROCS = [VPCosine(), VPLinear(), PolynomialVP(), KarrasVE(), RectifiedFlow()]


def _batch(seed=0, B=64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 3, 4, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x0, eps, t


@pytest.mark.parametrize("proc", PROCS, ids=lambda p: p.name)
def test_every_conversion_round_trips(proc):
    x0, eps, t = _batch()
    st = State({"x": x0}, x0.shape[0])
    c = coefficients(proc, t, st, "x")
    x_t = c.alpha * x0 + c.sigma * eps
    tol = dict(rtol=1e-9, atol=1e-9)
    assert torch.allclose(P.eps_from_x0(x_t, x0, c.alpha, c.sigma), eps, **tol)
    assert torch.allclose(P.x0_from_eps(x_t, eps, c.alpha, c.sigma), x0, **tol)
    v = P.v_from(x0, eps, c.alpha, c.sigma)
    assert torch.allclose(P.x0_from_v(x_t, v, c.alpha, c.sigma), x0, **tol)
    assert torch.allclose(P.eps_from_v(x_t, v, c.alpha, c.sigma), eps, **tol)
    u = P.velocity_from(x0, eps, c.d_alpha, c.d_sigma)
    assert torch.allclose(P.x0_from_velocity(x_t, u, c.alpha, c.sigma, c.d_alpha, c.d_sigma), x0, **tol)
    assert torch.allclose(P.eps_from_velocity(x_t, u, c.alpha, c.sigma, c.d_alpha, c.d_sigma), eps, **tol)
    score = P.score_from_eps(eps, c.sigma)
    assert torch.allclose(P.eps_from_score(score, c.sigma), eps, **tol)
    for pred in P.PREDICTIONS:
        tgt = P.target(pred, x0, eps, c)
        assert torch.allclose(P.to_x0(pred, tgt, x_t, c), x0, **tol), pred


def test_velocity_is_the_time_derivative_of_the_path():
    proc = VPCosine()
    x0, eps, t = _batch(1)
    t = t.clone().requires_grad_(True)
    a = proc.alpha(t).reshape(-1, 1, 1)
    s = proc.sigma(t).reshape(-1, 1, 1)
    x_t = a * x0 + s * eps
    dxdt = torch.autograd.grad(x_t.sum(), t)[0]
    st = State({"x": x0}, x0.shape[0])
    c = coefficients(proc, t.detach(), st, "x")
    assert torch.allclose(P.velocity_from(x0, eps, c.d_alpha, c.d_sigma).sum((1, 2)), dxdt, atol=1e-9)


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
@pytest.mark.parametrize("proc", [VPCosine(), RectifiedFlow(), KarrasVE()], ids=lambda p: p.name)
def test_denoiser_wrapper_recovers_x0_from_every_prediction(prediction, proc):
    """A network that outputs the exact target of its parameterisation gives the exact x0-hat."""
    mix = GaussianMixture.ring()
    exact = ExactDenoiser(mix, proc)
    g = torch.Generator().manual_seed(3)
    x = mix.state(torch.randn(32, 2, generator=g, dtype=torch.float64) * 3)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.9 + 0.05

    def network(x_t, tt, cond):
        d = exact(x_t, tt)["x"]
        c = coefficients(proc, tt, x_t, "x")
        e = P.eps_from_x0(x_t["x"], d, c.alpha, c.sigma)
        return x_t.like({"x": P.target(prediction, d, e, c)})

    den = Denoiser(network, proc, prediction=prediction)
    assert torch.allclose(den(x, t)["x"], exact(x, t)["x"], atol=1e-9)


@pytest.mark.parametrize("proc", [KarrasVE(), VPCosine()], ids=lambda p: p.name)
def test_edm_preconditioning_round_trip(proc):
    mix = GaussianMixture.ring()
    exact = ExactDenoiser(mix, proc)
    pre = EDMPreconditioning(sigma_data=0.5)
    g = torch.Generator().manual_seed(4)
    x = mix.state(torch.randn(16, 2, generator=g, dtype=torch.float64) * 3)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    s = proc.sigma_tilde(t)
    a = proc.alpha(t)

    def network(x_in, c_noise, cond):
        # F = (D - c_skip x~) / c_out, with x~ recovered from x_in = c_in x~
        assert torch.allclose(c_noise, pre.c_noise(s))
        xt = x_in["x"] / pre.c_in(s).reshape(-1, 1)
        d = exact(x_in.like({"x": xt * a.reshape(-1, 1)}), t)["x"]
        return x_in.like({"x": (d - pre.c_skip(s).reshape(-1, 1) * xt) / pre.c_out(s).reshape(-1, 1)})

    den = Denoiser(network, proc, prediction="x0", preconditioning=pre)
    assert torch.allclose(den(x, t)["x"], exact(x, t)["x"], atol=1e-9)
    assert pre.c_skip(torch.tensor(0.0)) == 1.0 and pre.c_out(torch.tensor(0.0)) == 0.0


def test_wrapper_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(lambda *a: None, VPCosine(), prediction="score_of_something")
    with pytest.raises(ValueError, match="x0"):
        Denoiser(lambda *a: None, VPCosine(), prediction="eps", preconditioning=EDMPreconditioning())
