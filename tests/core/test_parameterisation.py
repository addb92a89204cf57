import math

import pytest
import torch

from sciffusion.core import parameterisation as P
from sciffusion.core.parameterisation import (Denoiser, EDMPreconditioning, NetworkContractError, field_coefficients,
                                              make_parameterisation)
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
    c = field_coefficients(proc, t, st, "x")
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


def _plain_target(prediction, x0, eps, c):
    """Each prediction's regression target written from its definition (not from the scalings)."""
    return {"eps": eps, "x0": x0, "v": P.v_from(x0, eps, c.alpha, c.sigma),
            "velocity": P.velocity_from(x0, eps, c.d_alpha, c.d_sigma)}[prediction]


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
@pytest.mark.parametrize("proc", PROCS, ids=lambda p: p.name)
def test_the_scalings_give_each_prediction_its_definition(prediction, proc):
    """With F the prediction's own target, D = c_skip x_t + c_out F is x0, and the target
    coefficients (a, b) give exactly that F from (x0, eps)."""
    x0, eps, t = _batch(2)
    st = State({"x": x0}, x0.shape[0])
    c = field_coefficients(proc, t, st, "x")
    x_t = c.alpha * x0 + c.sigma * eps
    p = make_parameterisation(prediction)
    sc = p.scalings(proc.coefficients(t), t)
    F = _plain_target(prediction, x0, eps, c)
    D = st.expand(sc.c_skip, "x") * x_t + st.expand(sc.c_out, "x") * F
    assert torch.allclose(D, x0, rtol=1e-8, atol=1e-8), prediction
    a, b = sc.target_coefficients(proc.coefficients(t))
    assert torch.allclose(st.expand(a, "x") * x0 + st.expand(b, "x") * eps, F, rtol=1e-8, atol=1e-8)


def test_velocity_is_the_time_derivative_of_the_path():
    proc = VPCosine()
    x0, eps, t = _batch(1)
    t = t.clone().requires_grad_(True)
    a = proc.alpha(t).reshape(-1, 1, 1)
    s = proc.sigma(t).reshape(-1, 1, 1)
    x_t = a * x0 + s * eps
    dxdt = torch.autograd.grad(x_t.sum(), t)[0]
    st = State({"x": x0}, x0.shape[0])
    c = field_coefficients(proc, t.detach(), st, "x")
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
        assert torch.equal(tt, t)  # c_noise = t for the four plain predictions
        d = exact(x_t, tt)["x"]
        c = field_coefficients(proc, tt, x_t, "x")
        e = P.eps_from_x0(x_t["x"], d, c.alpha, c.sigma)
        return x_t.like({"x": _plain_target(prediction, d, e, c)})

    den = Denoiser(network, proc, prediction)
    assert torch.allclose(den(x, t)["x"], exact(x, t)["x"], atol=1e-9)


def test_edm_preconditioning_is_table_1_of_karras_et_al():
    """Karras et al. (2022), Table 1, written here from the paper: c_skip = sd^2/(s^2+sd^2),
    c_out = s sd / sqrt(sd^2+s^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4, and the loss weight
    lambda = (s^2+sd^2)/(s sd)^2 (so that lambda c_out^2 = 1)."""
    pre = EDMPreconditioning(sigma_data=0.5)
    for s in (0.002, 0.05, 0.5, 1.0, 7.3, 80.0):
        sd = 0.5
        st = torch.tensor(s, dtype=torch.float64)
        assert float(pre.c_skip(st)) == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert float(pre.c_out(st)) == pytest.approx(s * sd / math.sqrt(sd**2 + s**2), rel=1e-12)
        assert float(pre.c_in(st)) == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert float(pre.c_noise(st)) == pytest.approx(math.log(s) / 4, rel=1e-12, abs=1e-15)
        assert float(pre.loss_weight(st)) == pytest.approx((s**2 + sd**2) / (s * sd) ** 2, rel=1e-12)
        assert float(pre.loss_weight(st) * pre.c_out(st) ** 2) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("proc", [KarrasVE(), VPCosine()], ids=lambda p: p.name)
def test_edm_preconditioning_wraps_the_network_as_in_the_paper(proc):
    """The network sees c_in x~ = x / (alpha sqrt(s^2 + sd^2)) and ln(s)/4 (s = sigma/alpha), and
    D = c_skip x~ + c_out F with the paper's scalings written out here."""
    mix = GaussianMixture.ring()
    exact = ExactDenoiser(mix, proc)
    g = torch.Generator().manual_seed(4)
    x = mix.state(torch.randn(16, 2, generator=g, dtype=torch.float64) * 3)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sd = 0.5
    s = (proc.sigma(t) / proc.alpha(t)).reshape(-1, 1)
    a = proc.alpha(t).reshape(-1, 1)
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / torch.sqrt(sd**2 + s**2)
    c_in = 1 / torch.sqrt(s**2 + sd**2)
    seen = {}

    def network(x_in, c_noise, cond):
        seen["x_in"], seen["c_noise"] = x_in["x"], c_noise
        xt = x_in["x"] / c_in  # x~ = x / alpha
        d = exact(x_in.like({"x": xt * a}), t)["x"]
        return x_in.like({"x": (d - c_skip * xt) / c_out})

    den = Denoiser(network, proc, EDMPreconditioning(sd))
    assert torch.allclose(den(x, t)["x"], exact(x, t)["x"], atol=1e-9)
    assert torch.allclose(seen["x_in"], x["x"] / a * c_in, atol=1e-12)
    assert torch.allclose(seen["c_noise"], torch.log(s.reshape(-1)) / 4, atol=1e-12)


def test_wrapper_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(lambda *a: None, VPCosine(), "score_of_something")
    with pytest.raises(ValueError, match="x0"):
        make_parameterisation("eps", edm_preconditioning=True)


def test_a_network_that_breaks_the_contract_is_named():
    x = State({"x": torch.zeros(4, 2)}, 4)
    t = torch.full((4,), 0.5)
    for bad, what in ((lambda x, t, c: x["x"], "returned Tensor"), (lambda x, t, c: State({"y": x["x"]}, 4), "no field 'x'"),
                      (lambda x, t, c: x.like({"x": x["x"][:, :1]}), "shape")):
        with pytest.raises(NetworkContractError, match="build_network") as e:
            Denoiser(bad, VPCosine(), "v")(x, t)
        assert what in str(e.value)
