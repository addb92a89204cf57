"""Samplers against exact targets (../shared/reference/core.md): the exact Gaussian-mixture
denoiser stands in for the network, so order of convergence and sample distributions are checked
against ground truth."""

import math

import numpy as np
import pytest
import torch

from sciffusion.core import grids
from sciffusion.core.noise import ExampleNoise
from sciffusion.core.process import KarrasVE, RectifiedFlow, VPCosine, VPLinear
from sciffusion.core.samplers import (SAMPLERS, get_sampler, prior, sample_ddim, sample_ddpm, sample_dopri5,
                                      sample_dpmpp_2m, sample_euler, sample_euler_maruyama, sample_heun)
from sciffusion.core.state import State
from sciffusion.core.targets import (ExactDenoiser, ExactZeroMeanDenoiser, GaussianMixture, ZeroMeanGaussian,
                                     sliced_wasserstein)
from sciffusion.core.spaces import ZeroMean

RING = GaussianMixture.ring()


def start(proc, grid, n, seed0=0, target=RING):
    like = target.state(torch.zeros((n,) + target.event_shape, dtype=torch.float64))
    noise = ExampleNoise(range(seed0, seed0 + n))
    return prior(proc, like, noise, t=float(grid[0])), noise


@pytest.fixture(scope="module")
def reference():
    proc = KarrasVE()
    den = ExactDenoiser(RING, proc)
    x, _ = start(proc, grids.karras(proc, 10), 256)
    ref = sample_heun(den, x, grids.karras(proc, 600))["x"]
    return proc, den, x, ref


def rmse(a, b):
    return float((a - b).pow(2).sum(-1).mean().sqrt())


ORDERS = {  # sampler, NFE per step, (slope range)
    "euler": (sample_euler, 1, (0.8, 1.3)),
    "heun": (sample_heun, 2, (1.7, 2.8)),
    "dpmpp_2m": (sample_dpmpp_2m, 1, (1.4, 2.6)),
}


@pytest.mark.parametrize("name", list(ORDERS))
def test_order_of_convergence(reference, name):
    proc, den, x, ref = reference
    fn, per_step, (lo, hi) = ORDERS[name]
    steps = [20, 40, 80]
    errs = [rmse(fn(den, x, grids.karras(proc, n))["x"], ref) for n in steps]
    slope = -np.polyfit(np.log(np.array(steps) * per_step), np.log(errs), 1)[0]
    assert lo <= slope <= hi, f"{name}: slope {slope:.2f}, errors {errs}"
    assert errs[-1] < errs[0]


# ../shared/reference/core.md, 8-Gaussian ring, Karras rho 7, RMSE to a 1000-step Heun solution
ANCHORS = {
    "euler": {10: 0.250, 18: 0.122, 35: 0.058},
    "heun": {10: 0.204, 18: 0.033, 35: 0.0076},
    "dpmpp_2m": {10: 0.442, 18: 0.059, 35: 0.015},
}


@pytest.mark.parametrize("name", list(ANCHORS))
def test_reference_anchors(reference, name):
    proc, den, x, ref = reference
    fn = ORDERS[name][0]
    for steps, expected in ANCHORS[name].items():
        got = rmse(fn(den, x, grids.karras(proc, steps))["x"], ref)
        assert got == pytest.approx(expected, rel=0.25), f"{name} at {steps} steps: {got:.4f} vs {expected}"


def test_dopri5_matches_the_fine_solution(reference):
    proc, den, x, ref = reference
    out = sample_dopri5(den, x, grids.karras(proc, 10), rtol=1e-6, atol=1e-6, sigma_min=0.002)
    assert rmse(out["x"], ref) < 2e-3


def test_ode_solution_does_not_depend_on_the_process():
    """The PF-ODE in EDM's variables is the same for every process with the same sigma~ range."""
    outs = []
    for proc in (KarrasVE(), VPCosine(), RectifiedFlow()):
        grid = grids.karras(proc, 18)
        x, _ = start(proc, grid, 64)
        outs.append(sample_heun(ExactDenoiser(RING, proc), x, grid)["x"])
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(outs[0], outs[2], atol=1e-6)


def test_ddim_eta0_is_euler_and_eta1_is_ddpm():
    proc = VPCosine()
    den = ExactDenoiser(RING, proc)
    grid = grids.uniform(30, t_max=0.999)
    x, _ = start(proc, grid, 64)
    assert torch.allclose(sample_ddim(den, x, grid)["x"], sample_euler(den, x, grid)["x"], atol=1e-12)
    a = sample_ddim(den, x, grid, noise=ExampleNoise(range(64)), eta=1.0)["x"]
    b = sample_ddpm(den, x, grid, noise=ExampleNoise(range(64)))["x"]
    assert torch.allclose(a, b, atol=1e-10)


DISTRIBUTION_CASES = [
    ("euler", VPCosine(), "karras", 150, {}),
    ("heun", KarrasVE(), "karras", 30, {}),
    ("dpmpp_2m", VPCosine(), "log_snr", 40, {}),
    ("dpmpp_2m", RectifiedFlow(), "karras", 40, {}),
    ("ddim", VPCosine(), "uniform", 100, {"eta": 0.5}),
    ("ddpm", VPLinear(), "uniform", 200, {}),
    ("euler_maruyama", VPLinear(), "uniform", 400, {}),
    ("dopri5", VPCosine(), "karras", 10, {}),
]


@pytest.fixture(scope="module")
def noise_floor():
    a = RING.sample(2000, torch.Generator().manual_seed(100))
    b = RING.sample(2000, torch.Generator().manual_seed(101))
    return sliced_wasserstein(a, b)


@pytest.mark.parametrize("name, proc, grid_kind, steps, kw", DISTRIBUTION_CASES,
                         ids=[f"{c[0]}-{c[1].name}" for c in DISTRIBUTION_CASES])
def test_samples_match_the_data_distribution(noise_floor, name, proc, grid_kind, steps, kw):
    grid = grids.make_grid(grid_kind, proc, steps)
    if name == "euler_maruyama":
        grid = grids.uniform(steps, t_max=1.0)
    x, noise = start(proc, grid, 2000, seed0=7)
    out = get_sampler(name)(ExactDenoiser(RING, proc), x, grid, noise=noise, **kw)["x"]
    data = RING.sample(2000, torch.Generator().manual_seed(5))
    sw = sliced_wasserstein(out, data)
    assert sw < 2.5 * noise_floor, f"{name}: sliced W2 {sw:.4f}, noise floor {noise_floor:.4f}"
    assert_component_moments(out)


def assert_component_moments(out, n_modes=8, std=0.2):
    """Per-component moments (the noise floor with ~250 samples a mode is ~5 % on a std):
    every mode used about equally, each mode's mean on its centre and its per-axis std = 0.2."""
    comp = RING.component_of(out)
    counts = torch.bincount(comp, minlength=n_modes).double()
    expected = out.shape[0] / n_modes
    assert float(counts.min()) > 0.75 * expected and float(counts.max()) < 1.25 * expected, counts.tolist()
    for k in range(n_modes):
        pts = out[comp == k]
        assert float((pts.mean(0) - RING.means[k]).norm()) < 0.05, f"mode {k} mean off"
        stds = pts.std(0)
        assert bool(((stds / std - 1).abs() < 0.15).all()), f"mode {k}: std {stds.tolist()} vs {std}"


def test_moment_check_rejects_wrong_samples():
    """The distribution check above is not vacuous: too few steps or a wrong spread fail it."""
    proc = VPCosine()
    grid = grids.karras(proc, 4)
    x, _ = start(proc, grid, 2000, seed0=7)
    with pytest.raises(AssertionError):
        assert_component_moments(sample_euler(ExactDenoiser(RING, proc), x, grid)["x"])
    data = RING.sample(2000, torch.Generator().manual_seed(9))
    assert_component_moments(data)
    with pytest.raises(AssertionError):
        assert_component_moments(RING.means[RING.component_of(data)] + (data - RING.means[RING.component_of(data)]) * 1.3)


def _grouping_check(fn, target, den, proc, grid, states, seeds, **kw):
    """Same seeds, different batch compositions: identical samples."""
    whole = State.concat(states)
    x = prior(proc, whole, ExampleNoise(seeds), t=float(grid[0]))
    out = fn(den, x, grid, noise=ExampleNoise(seeds), **kw)
    order = [4, 1, 3]
    sub = whole.select(order)
    xs = prior(proc, sub, ExampleNoise([seeds[i] for i in order]), t=float(grid[0]))
    out_sub = fn(den, xs, grid, noise=ExampleNoise([seeds[i] for i in order]), **kw)
    return whole, out, sub, out_sub, order


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"repaint"}))
def test_sample_depends_only_on_its_seed(name):
    proc = VPLinear()
    grid = grids.uniform(40, t_max=1.0)
    fn = get_sampler(name)
    states = [RING.state(torch.zeros(5, 2, dtype=torch.float64))]
    whole, out, sub, out_sub, order = _grouping_check(fn, RING, ExactDenoiser(RING, proc), proc, grid, states,
                                                      [10, 20, 30, 40, 50])
    for j, i in enumerate(order):
        assert torch.allclose(out_sub["x"][j], out["x"][i], rtol=0, atol=1e-12), name


@pytest.mark.parametrize("name", ["ddpm", "dpmpp_2m", "heun"])
def test_variable_size_graph_batches(name):
    """Zero-CoM graphs of different sizes: exact projection per graph and independence from grouping."""
    proc = VPCosine()
    target = ZeroMeanGaussian(std=1.0, field="pos")
    den = ExactZeroMeanDenoiser(target, proc)
    sizes = [4, 9, 2, 6, 13]
    states = []
    for n in sizes:
        states.append(State({"pos": torch.zeros(n, 3, dtype=torch.float64)}, 1,
                            index={"pos": torch.zeros(n, dtype=torch.long)}, spaces={"pos": ZeroMean()}))
    grid = grids.uniform(50, t_max=0.995)
    whole, out, sub, out_sub, order = _grouping_check(get_sampler(name), target, den, proc, grid, states,
                                                      [3, 1, 4, 1, 5])
    idx = out.index["pos"]
    for i in range(len(sizes)):
        assert out["pos"][idx == i].mean(0).abs().max() < 1e-6
    for j, i in enumerate(order):
        assert torch.allclose(out_sub["pos"][sub.index["pos"] == j], out["pos"][idx == i], atol=1e-12)


def test_zero_mean_target_is_sampled_in_the_subspace():
    proc = VPCosine()
    target = ZeroMeanGaussian(std=0.7, field="pos")
    n, B = 6, 1500
    like = State({"pos": torch.zeros(B * n, 3, dtype=torch.float64)}, B,
                 index={"pos": torch.arange(B).repeat_interleave(n)}, spaces={"pos": ZeroMean()})
    grid = grids.karras(proc, 30)
    x = prior(proc, like, ExampleNoise(range(B)), t=float(grid[0]))
    out = sample_heun(ExactZeroMeanDenoiser(target, proc), x, grid)
    # E|x0|^2 = std^2 (N-1) d in the subspace
    per = out.squared_norm()
    assert float(per.mean()) == pytest.approx(0.49 * 5 * 3, rel=0.05)


def test_stochastic_samplers_need_noise_and_grids_are_checked():
    proc = VPCosine()
    den = ExactDenoiser(RING, proc)
    x = RING.state(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise=ExampleNoise"):
        sample_ddpm(den, x, grids.uniform(5))
    with pytest.raises(ValueError, match="decreasing"):
        sample_euler(den, x, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_euler(den, x, torch.tensor([1.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        sample_euler(den, x, torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="alpha > 0"):
        sample_euler_maruyama(ExactDenoiser(RING, RectifiedFlow()), x, grids.uniform(5), noise=ExampleNoise([0, 1]))
    with pytest.raises(ValueError, match="contains NaN"):
        sample_euler(den, RING.state(torch.full((2, 2), math.nan, dtype=torch.float64)), grids.uniform(5))
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("magic")


def test_callback_reports_progress():
    proc = VPCosine()
    seen = []
    grid = grids.karras(proc, 7)
    x, _ = start(proc, grid, 4)
    sample_dpmpp_2m(ExactDenoiser(RING, proc), x, grid, callback=lambda i, n, t, xs, d: seen.append((i, n, t)))
    assert [s[0] for s in seen] == list(range(1, 8)) and all(s[1] == 7 for s in seen) and seen[-1][2] == 0.0


def test_grids():
    proc = VPCosine()
    for g in (grids.uniform(10), grids.log_snr_uniform(proc, 10), grids.karras(proc, 10), grids.discrete(10)):
        assert g.shape == (11,) and float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all())
    k = grids.karras(KarrasVE(80.0), 5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    sig = KarrasVE(80.0).sigma(k)
    assert float(sig[0]) == pytest.approx(80.0) and float(sig[-2]) == pytest.approx(0.002)
    assert grids.discrete(4, 1000).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert grids.truncate(grids.uniform(10), 0.35).tolist()[:2] == [0.35, pytest.approx(0.3)]
    with pytest.raises(ValueError, match="positive integer"):
        grids.uniform(0)



def _ddpm_process():
    from sciffusion.core.process import TabulatedVP

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return TabulatedVP.from_alphas_cumprod(torch.cumprod(1 - betas, 0))


@pytest.mark.parametrize("name, steps, nfe", [("euler", 10, 10), ("heun", 10, 19), ("dpmpp_2m", 10, 10),
                                              ("ddim", 10, 10)])
def test_network_evaluations_per_sampler(name, steps, nfe):
    """n steps cost n evaluations (Heun 2n - 1), with no extra final call when the grid ends at clean data."""
    for proc in (_ddpm_process(), VPCosine(), KarrasVE()):
        den = ExactDenoiser(RING, proc)
        grid = grids.karras(proc, steps)
        x, _ = start(proc, grid, 8)
        get_sampler(name)(den, x, grid)
        assert den.calls == nfe, (proc.name, den.calls)


def test_dpmpp_2m_is_stable_on_a_ddpm_schedule():
    """Regression: on a discrete DDPM schedule the last step into the data must not extrapolate."""
    proc = _ddpm_process()
    den = ExactDenoiser(RING, proc)
    grid = grids.karras(proc, 10, sigma_max=float(proc.sigma_tilde(torch.tensor(1.0, dtype=torch.float64))))
    x, _ = start(proc, grid, 256)
    ref = sample_heun(den, x, grids.karras(proc, 500, sigma_max=float(proc.sigma_tilde(torch.tensor(1.0, dtype=torch.float64)))))["x"]
    err10 = rmse(sample_dpmpp_2m(den, x, grid)["x"], ref)
    err10_log = rmse(sample_dpmpp_2m(den, x, grids.log_snr_uniform(proc, 10))["x"], ref)
    err20_log = rmse(sample_dpmpp_2m(den, x, grids.log_snr_uniform(proc, 20))["x"], ref)
    # with a second-order last step these were 0.84 and 0.32
    assert err10 < 0.7 and err10_log < 0.25 and err20_log < 0.05, (err10, err10_log, err20_log)
