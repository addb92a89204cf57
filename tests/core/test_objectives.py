import pytest
import torch

from sciffusion.core import grids
from sciffusion.core.noise import ExampleNoise
from sciffusion.core.objectives import DiffusionObjective, drop_condition, sample_time
from sciffusion.core.parameterisation import (Denoiser, eps_from_x0, field_coefficients, v_from,
                                              velocity_from)
from sciffusion.core.process import KarrasVE, RectifiedFlow, VPCosine
from sciffusion.core.samplers import prior, sample_heun
from sciffusion.core.state import State
from sciffusion.core.targets import GaussianMixture


def _fixed_error_networks(proc, x0, delta):
    """Networks of every parameterisation whose implied x0-hat is x0 + delta."""

    def make(prediction):
        def net(x_t, t, cond):
            c = field_coefficients(proc, t, x_t, "x")
            d = x0["x"] + delta
            e = eps_from_x0(x_t["x"], d, c.alpha, c.sigma)
            out = {"eps": e, "x0": d, "v": v_from(d, e, c.alpha, c.sigma),
                   "velocity": velocity_from(d, e, c.d_alpha, c.d_sigma)}[prediction]
            return x_t.like({"x": out})

        return Denoiser(net, proc, prediction)

    return {p: make(p) for p in ("eps", "x0", "v", "velocity")}


@pytest.mark.parametrize("proc", [VPCosine(), RectifiedFlow()], ids=lambda p: p.name)
def test_weightings_are_the_same_loss_whatever_the_prediction(proc):
    g = torch.Generator().manual_seed(0)
    B = 32
    x0 = State({"x": torch.randn(B, 2, 3, generator=g, dtype=torch.float64)}, B)
    eps = x0.like({"x": torch.randn(B, 2, 3, generator=g, dtype=torch.float64)})
    delta = torch.randn(B, 2, 3, generator=g, dtype=torch.float64) * 0.1
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05
    nets = _fixed_error_networks(proc, x0, delta)
    x0_mse = delta.pow(2).mean((1, 2))
    snr = torch.exp(proc.log_snr(t))
    for weighting, w in (("snr", snr), ("min_snr", snr.clamp(max=5.0)),
                         ("edm", (proc.sigma_tilde(t) ** 2 + 0.25) / (proc.sigma_tilde(t) * 0.5) ** 2)):
        for pred, net in nets.items():
            obj = DiffusionObjective(weighting=weighting)
            got = obj.per_example(net, x0, t, eps)
            assert torch.allclose(got, w * x0_mse, rtol=1e-8), (weighting, pred)
    # uniform eps loss is SNR-weighted x0 loss (Ho et al.); uniform x0 loss is the x0 MSE
    uni = DiffusionObjective(weighting="uniform").per_example(nets["eps"], x0, t, eps)
    assert torch.allclose(uni, snr * x0_mse, rtol=1e-8)
    uni = DiffusionObjective(weighting="uniform").per_example(nets["x0"], x0, t, eps)
    assert torch.allclose(uni, x0_mse, rtol=1e-8)


def test_masked_and_padded_entries_do_not_count():
    proc = VPCosine()
    B, N = 4, 6
    sizes = torch.tensor([2, 6, 3, 1])
    mask = torch.arange(N)[None] < sizes[:, None]
    g = torch.Generator().manual_seed(1)
    x0 = State({"x": torch.randn(B, N, 3, generator=g, dtype=torch.float64)}, B, masks={"x": mask})
    eps = x0.like({"x": torch.randn(B, N, 3, generator=g, dtype=torch.float64)}).project()
    t = torch.full((B,), 0.3, dtype=torch.float64)
    delta = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    garbage = delta.clone()
    garbage[~mask] = 1e6  # the network may output anything on padding
    obj = DiffusionObjective()
    a = obj.per_example(_fixed_error_networks(proc, x0, delta)["x0"], x0, t, eps)
    b = obj.per_example(_fixed_error_networks(proc, x0, garbage)["x0"], x0, t, eps)
    assert torch.allclose(a, b)
    expected = torch.stack([delta[i, : sizes[i]].pow(2).mean() for i in range(B)])
    assert torch.allclose(a, expected)


def test_condition_dropout():
    g = torch.Generator().manual_seed(2)
    cond = {"label": torch.arange(10000) % 7, "prop": torch.ones(10000, 2)}
    out = drop_condition(cond, 0.2, {"label": 7, "prop": 0.0}, generator=g)
    dropped = out["label"] == 7
    assert float(dropped.double().mean()) == pytest.approx(0.2, abs=0.015)
    assert bool((out["prop"][dropped] == 0).all()) and bool((out["prop"][~dropped] == 1).all())
    assert bool((out["label"][~dropped] == cond["label"][~dropped]).all())
    with pytest.raises(ValueError, match="no null value"):
        drop_condition(cond, 0.1, {"label": 7})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_condition(cond, 1.5, {"label": 7, "prop": 0})


@pytest.mark.parametrize("kind", ["uniform", "discrete", "lognormal", "logit_normal", "beta"])
def test_time_samplers(kind):
    proc = KarrasVE()
    t = sample_time(kind, 20000, proc, generator=torch.Generator().manual_seed(3))
    assert t.dtype == torch.float64 and float(t.min()) >= 0 and float(t.max()) <= 1
    if kind == "lognormal":  # median of ln sigma~ is P_mean
        assert float(torch.log(proc.sigma_tilde(t)).median()) == pytest.approx(-1.2, abs=0.05)
    if kind == "discrete":
        assert torch.allclose(t * 1000, torch.round(t * 1000))
    if kind == "logit_normal":  # SD3's logit-normal(0, 1): logit(t) has mean 0 and std 1
        logit = torch.log(t) - torch.log1p(-t)
        assert float(logit.mean()) == pytest.approx(0.0, abs=0.03) and float(logit.std()) == pytest.approx(1.0, abs=0.03)


def test_lognormal_times_reach_the_end_of_the_sampling_grid():
    """EDM's lognormal on KarrasVE(80): the draws below sigma = 0.002 (the karras grid's end) are
    clamped there, not at t_min = 1e-3 (sigma 0.08), so training covers every noise level the
    sampler visits and almost nothing piles up at the clamp."""
    proc = KarrasVE()
    t = sample_time("lognormal", 200000, proc, generator=torch.Generator().manual_seed(5))
    s = proc.sigma_tilde(t)
    assert float((s < 0.08).double().mean()) == pytest.approx(0.1349, abs=0.004)  # P(z < (ln 0.08 + 1.2)/1.2)
    assert float(s.min()) == pytest.approx(0.002, rel=1e-9)
    assert float((s <= 0.002 * (1 + 1e-9)).double().mean()) < 1e-3


@pytest.mark.parametrize("params", [(2.0, 5.0), (0.5, 0.5)])
def test_beta_times_have_the_beta_moments(params):
    a, b = params
    t = sample_time("beta", 100000, VPCosine(), generator=torch.Generator().manual_seed(6), params=params, t_min=0.0)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert float(t.mean()) == pytest.approx(mean, abs=0.004)
    assert float(t.var()) == pytest.approx(var, rel=0.03)


def test_logit_normal_location_and_scale_come_from_the_config():
    t = sample_time("logit_normal", 50000, VPCosine(), generator=torch.Generator().manual_seed(7), params=(0.5, 0.6))
    logit = torch.log(t) - torch.log1p(-t)
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.02) and float(logit.std()) == pytest.approx(0.6, abs=0.02)


def test_edm_recipe_comes_whole():
    """EDM preconditioning with weighting and time_sampler left at "auto" gives EDM's loss weight
    and lognormal times; either can still be set by hand."""
    edm = DiffusionObjective.from_config({"prediction": "x0", "edm_preconditioning": True})
    assert (edm.weighting, edm.time_sampler) == ("edm", "lognormal")
    plain = DiffusionObjective.from_config({"prediction": "v"})
    assert (plain.weighting, plain.time_sampler) == ("uniform", "uniform")
    hand = DiffusionObjective.from_config({"prediction": "x0", "edm_preconditioning": True, "time_sampler": "uniform"})
    assert (hand.weighting, hand.time_sampler) == ("edm", "uniform")


def test_objective_errors():
    with pytest.raises(ValueError, match="unknown weighting"):
        DiffusionObjective(weighting="p2")
    with pytest.raises(ValueError, match="unknown time sampler"):
        DiffusionObjective(time_sampler="gamma")
    x0 = State({"x": torch.zeros(2, 2)}, 2)
    den = Denoiser(lambda x, t, c: x, VPCosine())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DiffusionObjective()(den, x0, t=torch.tensor([0.5, 2.0]))


class MLP(torch.nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.SiLU(), torch.nn.Linear(hidden, 2))

    def forward(self, x: State, t, cond=None):
        h = torch.cat([x["x"], t.to(x["x"].dtype).reshape(-1, 1)], dim=1)
        return x.like({"x": self.net(h)})


def test_a_small_network_learns_the_ring():
    """End to end through the core: objective -> AdamW -> sampler gives samples on the ring."""
    torch.manual_seed(0)
    ring = GaussianMixture.ring()
    proc = VPCosine()
    den = Denoiser(MLP(), proc, "v")
    obj = DiffusionObjective(weighting="uniform")
    opt = torch.optim.AdamW(den.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(1500):
        x0 = ring.state(ring.sample(256, g).float())
        loss = obj(den, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-100:]) < 0.9 * sum(losses[:100])  # v-loss has a large irreducible part
    grid = grids.karras(proc, 30)
    like = ring.state(torch.zeros(1000, 2))
    with torch.no_grad():
        out = sample_heun(den, prior(proc, like, ExampleNoise(range(1000)), t=float(grid[0])), grid)["x"]
    radius = out.norm(dim=1)
    assert float(radius.median()) == pytest.approx(4.0, abs=0.3)
    assert float(((radius - 4).abs() < 0.8).double().mean()) > 0.85
    assert torch.bincount(ring.component_of(out.double()), minlength=8).min() > 1000 / 8 * 0.5


def test_each_fields_share_of_the_loss_is_its_squared_error_over_all_entries():
    """parts[k] of a two-field state: the x0-prediction loss is the mean squared error over the
    entries of both fields, so field k's share is its own sum of squared errors over all entries,
    times the weighting (min-SNR here), and the shares add up to the loss."""
    proc = VPCosine()
    B = 8
    g = torch.Generator().manual_seed(3)
    x0 = State({"a": torch.randn(B, 4, 3, generator=g, dtype=torch.float64),
                "b": torch.randn(B, 5, generator=g, dtype=torch.float64)}, B)
    eps = x0.map(lambda k, v: torch.randn(v.shape, generator=g, dtype=v.dtype))
    delta = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.2 for k, v in x0.fields.items()}
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1

    def net(x_t, t_, cond):  # predicts x0 + delta exactly
        return x_t.like({k: x0[k] + delta[k] for k in x0.fields})

    parts: dict = {}
    loss = DiffusionObjective(weighting="min_snr").per_example(Denoiser(net, proc, "x0"), x0, t, eps, parts=parts)
    snr = torch.exp(proc.log_snr(t))
    entries = 4 * 3 + 5
    for k in ("a", "b"):
        expected = snr.clamp(max=5.0) * delta[k].pow(2).flatten(1).sum(1) / entries
        assert torch.allclose(parts[k], expected, rtol=1e-10), k
    assert torch.allclose(parts["a"] + parts["b"], loss, rtol=1e-12)
