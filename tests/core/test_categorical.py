"""Categorical fields as a space of the core: masking diffusion, exact jumps, the cross-entropy
loss, and joint sampling with continuous fields in one loop."""

import itertools
import math

import pytest
import torch

from sciffusion.core.noise import ExampleNoise
from sciffusion.core.objectives import DiffusionObjective, diffuse
from sciffusion.core.parameterisation import Denoiser
from sciffusion.core.process import RectifiedFlow, VPCosine
from sciffusion.core.sampling import SampleSpec, sample_batch
from sciffusion.core.spaces import Categorical
from sciffusion.core.state import State

K = 3
# a joint law of two tokens that are strongly dependent: what only joint sampling gets right
PAIRS = {(0, 0): 0.4, (1, 2): 0.35, (2, 1): 0.2, (0, 2): 0.05}


def _onehot(classes, n_rows):
    x = torch.nn.functional.one_hot(torch.as_tensor(classes), K + 1).to(torch.float64)
    return x.reshape(-1, n_rows, K + 1)


class ExactPairs(torch.nn.Module):
    """The exact posterior E[x0 | x_t] of PAIRS under masking, as logits (the network a perfect
    model would be): for each masked token, the law of its class given the unmasked ones."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: State, t, cond=None) -> State:
        self.calls += 1
        v = x["tok"]  # (B, 2, K + 1)
        pairs = torch.tensor(list(PAIRS), dtype=torch.long)  # (P, 2)
        w = torch.tensor(list(PAIRS.values()), dtype=torch.float64)  # (P,)
        masked = v[..., K] > 0.5  # (B, 2)
        cls = v[..., :K].argmax(-1)  # (B, 2)
        fits = (masked[:, None, :] | (cls[:, None, :] == pairs[None])).all(-1)  # (B, P): consistent pairs
        weights = w[None] * fits
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, w[None])  # (never reached on a fine grid)
        post = weights / weights.sum(1, keepdim=True)
        probs = torch.zeros(v.shape[0], 2, K, dtype=torch.float64)
        for j in range(2):
            probs[:, j].index_add_(1, pairs[:, j], post)
        logits = torch.log(probs.clamp_min(1e-300))
        return x.like({"tok": torch.cat([logits, torch.zeros_like(logits[..., :1])], -1)})


def _template(n):
    return State.dense(tok=torch.zeros(n, 2, K + 1, dtype=torch.float64), spaces={"tok": Categorical(K)})


def test_masking_diffuses_each_row_with_probability_t():
    n = 20000
    x0 = State.dense(tok=_onehot([1] * (2 * n), 2), spaces={"tok": Categorical(K)})
    t = torch.full((n,), 0.3, dtype=torch.float64)
    xt = diffuse(x0, t, ExampleNoise(range(n)).normal(x0), VPCosine())["tok"]
    masked = xt[..., K] > 0.5
    assert float(masked.double().mean()) == pytest.approx(0.3, abs=0.01)
    assert bool((xt[~masked] == x0["tok"][~masked]).all())  # unmasked rows are the data


@pytest.mark.parametrize("sampler, steps", [("euler", 400), ("ddpm", 400), ("dpmpp_2m", 400), ("heun", 200)])
def test_sampling_with_the_exact_posterior_draws_the_joint_law(sampler, steps):
    """The jump from t to t_next (unmask with probability (t - t_next)/t, class from the posterior)
    is the exact reverse of masking for each token; tokens that unmask in the same step are drawn
    independently, so the joint law is exact as the steps shrink (on 400 uniform steps two tokens
    unmask together in about 0.5 % of the pairs). With the exact posterior every sampler then
    draws PAIRS itself, correlations included."""
    n = 4000
    den = Denoiser(ExactPairs(), VPCosine(), "x0")
    spec = SampleSpec.from_config({"sampler": sampler, "steps": steps, "grid": "uniform"}, den.process)
    out = sample_batch(den, _template(n), None, ExampleNoise(range(n)), spec).x0["tok"]
    assert bool((out.sum(-1) == 1).all()) and not bool((out[..., K] > 0).any())  # one-hot, nothing masked
    classes = out[..., :K].argmax(-1)
    counts = {pair: 0 for pair in itertools.product(range(K), repeat=2)}
    for a, b in classes.tolist():
        counts[(a, b)] += 1
    for pair, c in counts.items():
        want = PAIRS.get(pair, 0.0)
        assert c / n == pytest.approx(want, abs=4 * math.sqrt(max(want, 0.01) * (1 - want) / n) + 1e-9), (pair, c / n)


def test_categorical_samples_depend_on_their_seed_alone():
    den = Denoiser(ExactPairs(), VPCosine(), "x0")
    spec = SampleSpec.from_config({"sampler": "euler", "steps": 6, "grid": "uniform"}, den.process)
    both = sample_batch(den, _template(6), None, ExampleNoise(range(6)), spec).x0["tok"]
    some = sample_batch(den, _template(2), None, ExampleNoise([4, 1]), spec).x0["tok"]
    assert torch.equal(some, both[[4, 1]])


class Joint(torch.nn.Module):
    """A token and a 1-D position that sits at +2 for class 0 and -2 for class 1 (x0-prediction)."""

    def forward(self, x: State, t, cond=None) -> State:
        tok = x["tok"]
        masked = tok[..., K] > 0.5
        logits = torch.log(torch.tensor([0.5, 0.5, 1e-12], dtype=tok.dtype)).expand(tok.shape[0], K).clone()
        logits = torch.cat([logits, torch.zeros(tok.shape[0], 1, dtype=tok.dtype)], -1)
        cls = tok[:, :K].argmax(-1)
        pos = torch.where(masked, torch.zeros_like(cls, dtype=tok.dtype), torch.where(cls == 0, 2.0, -2.0))
        return x.like({"tok": logits, "pos": pos.reshape(-1, 1)})


def test_continuous_and_categorical_fields_step_together():
    """One loop: the token jumps, the position follows the ODE with the x0 estimate that the
    token's class implies, and ends where that class says."""
    n = 200
    like = State.dense(tok=torch.zeros(n, K + 1, dtype=torch.float64), pos=torch.zeros(n, 1, dtype=torch.float64),
                       spaces={"tok": Categorical(K)})
    den = Denoiser(Joint(), RectifiedFlow(), "x0")
    spec = SampleSpec.from_config({"sampler": "euler", "steps": 30, "grid": "uniform"}, den.process)
    out = sample_batch(den, like, None, ExampleNoise(range(n)), spec)
    cls = out.x0["tok"][:, :K].argmax(-1)
    assert set(cls.tolist()) <= {0, 1} and 0.35 < float((cls == 0).double().mean()) < 0.65
    want = torch.where(cls == 0, 2.0, -2.0).to(torch.float64)
    # the position lands on its class's value, except where the token unmasked in the very last
    # step (the position's last update used the estimate made while it was masked): m(1/30) = 3 %
    close = (out.x0["pos"][:, 0] - want).abs() < 1e-6
    assert 0.9 < float(close.double().mean()) < 1.0
    assert out.network_calls == 30


def test_a_faster_unmasking_schedule_leaves_the_positions_more_time():
    """With m(t) = t^2 only m(1/30) = 0.1 % of the tokens are still masked in the last step."""
    n = 400
    like = State.dense(tok=torch.zeros(n, K + 1, dtype=torch.float64), pos=torch.zeros(n, 1, dtype=torch.float64),
                       spaces={"tok": Categorical(K, power=2.0)})
    den = Denoiser(Joint(), RectifiedFlow(), "x0")
    spec = SampleSpec.from_config({"sampler": "euler", "steps": 30, "grid": "uniform"}, den.process)
    out = sample_batch(den, like, None, ExampleNoise(range(n)), spec)
    want = torch.where(out.x0["tok"][:, :K].argmax(-1) == 0, 2.0, -2.0).to(torch.float64)
    assert float(((out.x0["pos"][:, 0] - want).abs() < 1e-6).double().mean()) > 0.99


def test_the_cross_entropy_trains_class_frequencies():
    """A network with one learnable logit vector, trained on tokens of frequency (0.6, 0.3, 0.1)
    with the objective's categorical loss, learns those frequencies."""

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(K + 1))

        def forward(self, x, t, cond=None):
            return x.like({"tok": self.w.expand_as(x["tok"])})

    torch.manual_seed(0)
    den = Denoiser(Logits(), VPCosine(), "x0")
    obj = DiffusionObjective()
    opt = torch.optim.Adam(den.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        cls = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), 256, replacement=True, generator=g)
        x0 = State.dense(tok=torch.nn.functional.one_hot(cls, K + 1).float(), spaces={"tok": Categorical(K)})
        loss = obj(den, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = torch.softmax(den.network.w[:K].detach(), 0)
    assert torch.allclose(p, torch.tensor([0.6, 0.3, 0.1]), atol=0.05), p


def test_ode_only_methods_refuse_categorical_fields():
    den = Denoiser(ExactPairs(), VPCosine(), "x0")
    spec = SampleSpec.from_config({"sampler": "dopri5", "steps": 4, "grid": "uniform"}, den.process)
    with pytest.raises(ValueError, match="categorical"):
        sample_batch(den, _template(2), None, ExampleNoise(range(2)), spec)
