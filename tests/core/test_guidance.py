import math

import pytest
import torch

from sciffusion.core import grids
from sciffusion.core.guidance import ClassifierFreeGuidance, ClassifierGuidance, Inpaint, sdedit_start
from sciffusion.core.samplers import sample_repaint
from sciffusion.core.noise import ExampleNoise
from sciffusion.core.process import KarrasVE, VPCosine, VPLinear
from sciffusion.core.samplers import prior, sample_ddpm, sample_dpmpp_2m, sample_heun
from sciffusion.core.state import State
from sciffusion.core.targets import ExactDenoiser, GaussianMixture

N = 2000


def two_class_ring():
    ring = GaussianMixture.ring()
    return GaussianMixture(ring.means, 0.2, labels=torch.arange(8) // 4)  # modes 0-3 class 0, 4-7 class 1


def overlapping_1d():
    return GaussianMixture(torch.tensor([[-0.5], [0.5]], dtype=torch.float64), 0.5, labels=torch.tensor([0, 1]))


def run(den, target, proc, steps=40, n=N, cond=None, seed0=0):
    grid = grids.karras(proc, steps)
    like = target.state(torch.zeros((n,) + target.event_shape, dtype=torch.float64))
    x = prior(proc, like, ExampleNoise(range(seed0, seed0 + n)), t=float(grid[0]))
    return sample_dpmpp_2m(den, x, grid, cond)["x"]


def test_cfg_weight_zero_is_the_conditional_model():
    target, proc = two_class_ring(), VPCosine()
    den = ExactDenoiser(target, proc)
    cfg = ClassifierFreeGuidance(den, weight=0.0, null_cond=None)
    x = target.state(torch.randn(64, 2, dtype=torch.float64) * 3)
    t = torch.full((64,), 0.4, dtype=torch.float64)
    y = torch.zeros(64, dtype=torch.long)
    assert torch.equal(cfg(x, t, y)["x"], den(x, t, y)["x"])
    out = run(cfg, target, proc, cond=torch.zeros(N, dtype=torch.long))
    comp = target.component_of(out)
    assert bool((comp < 4).all()), "weight 0 must sample class 0 only"
    counts = torch.bincount(comp, minlength=4).double()
    assert float(counts.min()) > 0.8 * N / 4
    for k in range(4):
        pts = out[comp == k]
        assert float((pts.mean(0) - target.means[k]).norm()) < 0.05
        assert bool(((pts.std(0) / 0.2 - 1).abs() < 0.15).all())


def test_cfg_weight_sharpens_overlapping_classes():
    """Theory: guidance tilts p(x|c) by (p(x|c)/p(x))^w, so for overlapping classes the mass on the
    class's own side grows with w and the mean moves away from the other class."""
    target, proc = overlapping_1d(), VPCosine()
    den = ExactDenoiser(target, proc)
    cond = torch.zeros(N, dtype=torch.long)
    purity, means = [], []
    for w in (0.0, 1.0, 3.0):
        out = run(ClassifierFreeGuidance(den, w), target, proc, cond=cond)[:, 0]
        purity.append(float((out < 0).double().mean()))
        means.append(float(out.mean()))
    # weight 0: exactly the class-0 Gaussian N(-0.5, 0.5^2): P(x < 0) = Phi(1) = 0.841
    assert purity[0] == pytest.approx(0.8413, abs=0.025)
    assert means[0] == pytest.approx(-0.5, abs=0.04)
    assert purity[0] < purity[1] < purity[2] and means[0] > means[1] > means[2]


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_denoiser():
    """grad log p(y|x_t) added to the unconditional score is the conditional score (Bayes)."""
    target, proc = two_class_ring(), VPCosine()
    den = ExactDenoiser(target, proc)

    def log_p_y(x: State, t, y):
        t64 = t.to(torch.float64)
        return target.class_log_prob_t(x["x"], proc.alpha(t64), proc.sigma(t64), y)

    guided = ClassifierGuidance(den, lambda x, t, y: log_p_y(x, t, y), scale=1.0)
    unconditional = ClassifierGuidance(ExactDenoiser(target, proc), log_p_y, scale=1.0)
    x = target.state(torch.randn(128, 2, dtype=torch.float64) * 3)
    y = torch.randint(0, 2, (128,), generator=torch.Generator().manual_seed(0))
    for tv in (0.1, 0.4, 0.8):
        t = torch.full((128,), tv, dtype=torch.float64)
        want = den(x, t, y)["x"]  # the conditional exact denoiser

        class Uncond(torch.nn.Module):
            process = proc

            def forward(self, xs, tt, cond=None):
                return den(xs, tt, None)

        got = ClassifierGuidance(Uncond(), log_p_y, scale=1.0)(x, t, y)["x"]
        assert torch.allclose(got, want, atol=1e-8), tv
    assert guided.process is proc and unconditional.scale == 1.0


def _inpaint(target, proc, xk, sampler, steps=100, n=N, **kw):
    known = target.state(torch.tensor([[xk, 0.0]], dtype=torch.float64).expand(n, 2).clone())
    inpaint = Inpaint(known, {"x": torch.tensor([True, False]).expand(n, 2)}, proc)
    noise = ExampleNoise(range(n))
    x = prior(proc, target.state(torch.zeros(n, 2, dtype=torch.float64)), noise, t=1.0)
    out = sampler(ExactDenoiser(target, proc), x, grids.uniform(steps), noise=noise, constraint=inpaint, **kw)["x"]
    assert bool((out[:, 0] == xk).all()), "known entries must be exactly as given"
    return out[:, 1]


def test_inpainting_pins_known_entries_and_fills_from_the_conditional():
    """Known x = 3 selects two of three modes: y | x ~ 0.5 N(2, 0.4^2) + 0.5 N(-1, 0.4^2).
    Replacement gets the modes and spreads but misweights them somewhat; RePaint's resampling
    fixes the weights."""
    target = GaussianMixture(torch.tensor([[-3.0, -2.0], [3.0, 2.0], [3.0, -1.0]], dtype=torch.float64), 0.4,
                             weights=torch.tensor([0.5, 0.25, 0.25]))
    proc = VPLinear()
    for sampler, kw, weight_tol in ((sample_ddpm, {}, 0.1), (sample_repaint, {"resample": 5}, 0.04)):
        y = _inpaint(target, proc, 3.0, sampler, **kw)
        upper = y > 0.5
        assert float(upper.double().mean()) == pytest.approx(0.5, abs=weight_tol), sampler.__name__
        for side, centre in ((upper, 2.0), (~upper, -1.0)):
            assert float(y[side].mean()) == pytest.approx(centre, abs=0.1)
            assert float(y[side].std()) == pytest.approx(0.4, rel=0.25)


def test_repaint_resampling_harmonises_a_hard_conditional():
    """Ring with x = 4 cos(pi/4) known: y | x is bimodal at +-2.83 with std 0.2. Plain replacement
    leaves many samples off the data (the known limit of replacement); RePaint's resampling moves
    the filled part towards the conditional."""
    ring, proc = GaussianMixture.ring(), VPLinear()
    xk = 4 * math.cos(math.pi / 4)

    def spread(y):  # mean distance of y to the nearest conditional mode
        return float(torch.minimum((y - xk).abs(), (y + xk).abs()).mean())

    plain = spread(_inpaint(ring, proc, xk, sample_ddpm, steps=50, n=1000))
    resampled = spread(_inpaint(ring, proc, xk, sample_repaint, steps=50, n=1000, resample=10))
    assert resampled < 0.75 * plain, (plain, resampled)


def test_inpainting_errors():
    ring = GaussianMixture.ring()
    known = ring.state(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown field 'y'"):
        Inpaint(known, {"y": torch.ones(4, 2, dtype=torch.bool)}, VPCosine())
    with pytest.raises(ValueError, match="must be bool"):
        Inpaint(known, {"x": torch.ones(4, 2)}, VPCosine())
    with pytest.raises(ValueError, match="needs constraint"):
        sample_repaint(ExactDenoiser(ring, VPCosine()), known, grids.uniform(4), noise=ExampleNoise(range(4)))


def test_sdedit_preserves_the_data_distribution_and_stays_close_for_small_t0():
    ring, proc = GaussianMixture.ring(), KarrasVE()
    den = ExactDenoiser(ring, proc)
    x0 = ring.state(ring.sample(N, torch.Generator().manual_seed(3)))
    grid = grids.karras(proc, 40)
    for t0, max_move in ((0.004, 0.5), (0.1, None)):  # sigma 0.32 and 8
        noise = ExampleNoise(range(N))
        start = sdedit_start(x0, t0, proc, noise)
        out = sample_heun(den, start, grids.truncate(grid, t0))["x"]
        comp = ring.component_of(out)
        for k in range(8):
            pts = out[comp == k]
            assert float((pts.mean(0) - ring.means[k]).norm()) < 0.06
            assert bool(((pts.std(0) / 0.2 - 1).abs() < 0.2).all())
        moved = (out - x0["x"]).norm(dim=1)
        if max_move is not None:  # a small t0 keeps each sample on its own mode
            assert bool((ring.component_of(out) == ring.component_of(x0["x"])).all())
            assert float(moved.mean()) < max_move
    with pytest.raises(ValueError, match="t0"):
        sdedit_start(x0, 0.0, proc, ExampleNoise(range(N)))
