"""The one sampling path: a [sample] table means the same everywhere, and network calls are
counted where the network is called."""

import pytest
import torch

from sciffusion.core import grids
from sciffusion.core.guidance import Inpaint
from sciffusion.core.noise import ExampleNoise
from sciffusion.core.process import PolynomialVP, VPCosine
from sciffusion.core.sampling import SampleSpec, sample_batch
from sciffusion.core.targets import ExactDenoiser, GaussianMixture


def _spec(proc, **table):
    s = {"sampler": "dpmpp_2m", "steps": 10, "grid": "karras", "guidance": 0.0, "dtype": ""}
    s.update(table)
    return SampleSpec.from_config(s, proc)


def _run(proc, spec, n=16, **kw):
    ring = GaussianMixture.ring()
    den = ExactDenoiser(ring, proc)
    like = ring.state(torch.zeros(n, 2, dtype=torch.float64))
    out = sample_batch(den, like, None, ExampleNoise(range(n)), spec, **kw)
    return out, den


@pytest.mark.parametrize("sampler, steps, calls", [
    ("euler", 10, 10), ("ddpm", 10, 10), ("dpmpp_2m", 10, 10), ("heun", 10, 19), ("ddim", 7, 7)])
def test_network_calls_are_counted_where_the_network_is_called(sampler, steps, calls):
    """A process with sigma(0) = 0 (vp_cosine): n steps of a one-call method are n calls, Heun's
    2n - 1 (its last step is an Euler step); the count is what the network saw."""
    out, den = _run(VPCosine(), _spec(VPCosine(), sampler=sampler, steps=steps))
    assert out.network_calls == calls == den.calls


def test_the_final_denoising_call_is_a_call():
    """EDM's polynomial schedule has sigma(0) > 0: 50 DDPM steps end with one Tweedie denoising
    call, 51 calls in all (what the molecules model card must say)."""
    proc = PolynomialVP()
    out, den = _run(proc, _spec(proc, sampler="ddpm", steps=50, grid="discrete"), n=4)
    assert out.network_calls == 51 == den.calls


def test_the_karras_grid_ends_at_the_data_without_a_zero_length_step():
    """On PolynomialVP, sigma~(0) = 0.0032 lies above sigma_min = 0.002: the rho-spaced sigmas end
    there, at t = 0, instead of a last step from t ~ 0 to t = 0 that costs a call for nothing."""
    proc = PolynomialVP()
    g = grids.karras(proc, 20)
    assert g.numel() == 21 and float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all())
    steps = (g[:-1] - g[1:]).tolist()
    assert min(steps) > 1e-4, steps[-3:]
    out, _ = _run(proc, _spec(proc, sampler="euler", steps=20), n=4)
    assert out.network_calls == 21  # 20 steps + the final denoise (sigma(0) > 0)


def test_guidance_costs_two_calls_per_evaluation():
    proc = VPCosine()
    ring = GaussianMixture.ring(labels=True)
    den = ExactDenoiser(ring, proc)
    n = 8
    like = ring.state(torch.zeros(n, 2, dtype=torch.float64))
    cond = {"label": torch.arange(n) % 8}
    out = sample_batch(den, like, cond, ExampleNoise(range(n)), _spec(proc, steps=6, guidance=1.0),
                       null={"label": -1})
    assert out.network_calls == 12 == den.calls


def test_eta_reaches_ddim():
    proc = VPCosine()
    det, _ = _run(proc, _spec(proc, sampler="ddim", steps=8, eta=0.0))
    sto, _ = _run(proc, _spec(proc, sampler="ddim", steps=8, eta=1.0))
    euler, _ = _run(proc, _spec(proc, sampler="euler", steps=8))
    assert not torch.allclose(det.x0["x"], sto.x0["x"])
    assert torch.allclose(det.x0["x"], euler.x0["x"], atol=1e-10)  # DDIM(0) is Euler on the PF-ODE


def test_repaint_does_not_resample_its_last_step():
    """Lugmayr et al. (2022), Alg. 1 resamples while t > 1 only: 10 steps with resample 5 are
    9 * 5 + 1 = 46 calls (not 50)."""
    proc = VPCosine()
    ring = GaussianMixture.ring()
    n = 6
    known = ring.state(torch.full((n, 2), 2.0, dtype=torch.float64))
    pin = Inpaint(known, {"x": torch.tensor([True, False]).expand(n, 2)}, proc)
    out, den = _run(proc, _spec(proc, sampler="repaint", steps=10, grid="uniform", resample=5), n=n, constraint=pin)
    assert out.network_calls == 46 == den.calls
    assert bool((out.x0["x"][:, 0] == 2.0).all())


def test_a_sampler_that_needs_a_constraint_says_so():
    proc = VPCosine()
    with pytest.raises(ValueError, match="resamples around known data"):
        _run(proc, _spec(proc, sampler="repaint", steps=4, resample=2))


def test_float64_sampling_casts_the_state():
    proc = VPCosine()
    ring = GaussianMixture.ring()
    den = ExactDenoiser(ring, proc)
    like = ring.state(torch.zeros(4, 2))
    out = sample_batch(den, like, None, ExampleNoise(range(4)), _spec(proc, steps=4, dtype="float64"))
    assert out.x0["x"].dtype == torch.float64


class Echo(torch.nn.Module):
    """x0-prediction that records the self-conditioning input it sees and returns x + 1."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append(x["sc:x"].clone())
        return x.like({"x": x["x"] + 1.0})


def test_self_conditioning_feeds_the_previous_estimate():
    """Samplers pass each call the previous call's D (zeros at the first); the objective makes the
    estimate with a first pass, for the examples chosen, without gradient."""
    from sciffusion.core.objectives import DiffusionObjective
    from sciffusion.core.parameterisation import Denoiser
    from sciffusion.core.state import State

    net = Echo()
    den = Denoiser(net, VPCosine(), "x0", self_conditioning=True)
    like = State.dense(x=torch.zeros(3, 2, dtype=torch.float64))
    out = sample_batch(den, like, None, ExampleNoise(range(3)), _spec(VPCosine(), sampler="euler", steps=3))
    assert torch.equal(net.seen[0], torch.zeros(3, 2, dtype=torch.float64))
    assert out.network_calls == 3 and len(net.seen) == 3
    for before, now in zip(net.seen[1:], net.seen[2:]):
        assert not torch.equal(before, now)
    net.seen.clear()
    x0 = State.dense(x=torch.randn(4, 2))
    t = torch.full((4,), 0.5)
    DiffusionObjective().per_example(den, x0, t, x0.map(lambda k, v: torch.randn_like(v)),
                                     self_cond=torch.tensor([True, False, True, False]))
    first, second = net.seen
    assert torch.equal(first, torch.zeros(4, 2))  # the first pass sees no estimate
    assert bool((second[[1, 3]] == 0).all()) and bool((second[[0, 2]] != 0).all())


def test_the_log_snr_grid_works_where_the_log_snr_is_infinite_at_t_1():
    """Rectified flow has alpha(1) = 0 (log-SNR -inf): the grid is spaced from t = 1 - t_min and
    still starts at t = 1."""
    from sciffusion.core.process import RectifiedFlow

    g = grids.log_snr_uniform(RectifiedFlow(), 20)
    assert float(g[0]) == 1.0 and float(g[-1]) == 0.0 and g.numel() == 21
    assert bool((g[1:] < g[:-1]).all())


def test_sdedit_starts_from_the_given_state_on_the_truncated_grid():
    """``start = (given, t0)``: the sampler runs only the grid's part at or below t0 (fewer calls),
    from the given state noised to t0; a tiny t0 hands back the given state almost unchanged, and
    t0 = 1 costs what sampling from the prior costs."""
    proc = VPCosine()
    spec = _spec(proc, sampler="euler", steps=20, grid="uniform")
    n = 16
    ring = GaussianMixture.ring()
    given = ring.state(torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    t0 = 0.3
    out, den = _run(proc, spec, n=n, start=(given, t0))
    below = int((spec.grid < t0).sum())  # the truncated grid: t0 then the grid's times below it
    assert out.network_calls == below == den.calls < 20
    tiny, _ = _run(proc, spec, n=n, start=(given, 1e-4))
    assert torch.allclose(tiny.x0["x"], given["x"], atol=1e-2)
    far = (out.x0["x"] - given["x"]).abs().mean()
    assert far > (tiny.x0["x"] - given["x"]).abs().mean()
    full, _ = _run(proc, spec, n=n, start=(given, 1.0))
    assert full.network_calls == 20
