import math

import pytest
import torch

from sciffusion.core.noise import ExampleNoise
from sciffusion.core.spaces import Euclidean, ZeroMean
from sciffusion.core.state import State

SIZES = [3, 7, 1, 12, 5]


def graph_state(sizes=SIZES, d=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    pos = torch.randn(n, d, generator=g, dtype=dtype) + 5.0
    h = torch.randn(n, 4, generator=g, dtype=dtype)
    idx = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return State({"pos": pos, "h": h}, len(sizes), index={"pos": idx, "h": idx}, spaces={"pos": ZeroMean()})


def padded_state(sizes=SIZES, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, N = len(sizes), max(sizes)
    pos = torch.randn(B, N, d, generator=g, dtype=torch.float64) + 5.0
    mask = torch.arange(N)[None, :] < torch.tensor(sizes)[:, None]
    return State({"pos": pos}, B, masks={"pos": mask}, spaces={"pos": ZeroMean()})


def test_zero_mean_projection_is_exact_per_graph():
    s = graph_state().project()
    idx = s.index["pos"]
    for i in range(len(SIZES)):
        centre = s["pos"][idx == i].mean(0)
        assert centre.abs().max() < 1e-12
    # float32 too, to 1e-6
    s32 = graph_state(dtype=torch.float32).project()
    for i in range(len(SIZES)):
        assert s32["pos"][s32.index["pos"] == i].mean(0).abs().max() < 1e-6
    # idempotent
    assert torch.allclose(s.project()["pos"], s["pos"], atol=1e-12)


def test_zero_mean_on_padded_sets_ignores_padding():
    s = padded_state().project()
    m = s.masks["pos"]
    for i, n in enumerate(SIZES):
        assert s["pos"][i, :n].mean(0).abs().max() < 1e-12
        assert bool((s["pos"][i, n:] == 0).all())
    assert s.dof().tolist() == [(n - 1) * 3 for n in SIZES]
    assert m.sum().item() == sum(SIZES)


def test_degrees_of_freedom():
    s = graph_state()
    assert s.dof().tolist() == [(n - 1) * 3 + n * 4 for n in SIZES]
    dense = State({"x": torch.zeros(4, 2, 5)}, 4)
    assert dense.dof().tolist() == [10.0] * 4


def test_per_example_broadcast_any_rank():
    s = State({"a": torch.ones(4, 2, 3, 5), "b": torch.ones(4)}, 4)
    c = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = s.scale(c)
    assert torch.equal(out["a"][:, 0, 0, 0], c) and torch.equal(out["b"], c)
    g = graph_state()
    out = g.scale(torch.arange(5, dtype=torch.float64))
    assert torch.allclose(out["pos"] / g["pos"], g.index["pos"].to(torch.float64)[:, None].expand(-1, 3))


def test_noise_depends_only_on_the_seed():
    full = graph_state()
    seeds = [11, 22, 33, 44, 55]
    z_full = ExampleNoise(seeds).normal(full)
    order = [3, 0, 4]
    sub = full.select(order)
    z_sub = ExampleNoise([seeds[i] for i in order]).normal(sub)
    for j, i in enumerate(order):
        assert torch.equal(z_sub["pos"][sub.index["pos"] == j], z_full["pos"][full.index["pos"] == i])
        assert torch.equal(z_sub["h"][sub.index["h"] == j], z_full["h"][full.index["h"] == i])
    # successive draws differ; same seed, same draw number gives the same values
    n = ExampleNoise(seeds)
    a, b = n.normal(full), n.normal(full)
    assert not torch.equal(a["h"], b["h"])
    assert torch.equal(ExampleNoise(seeds).normal(full)["h"], a["h"])


def test_noise_is_independent_of_padding():
    sizes = [3, 5]
    small = padded_state(sizes)
    big = State({"pos": torch.zeros(2, 9, 3, dtype=torch.float64)}, 2,
                masks={"pos": torch.arange(9)[None] < torch.tensor(sizes)[:, None]}, spaces={"pos": ZeroMean()})
    za = ExampleNoise([1, 2]).normal(small)["pos"]
    zb = ExampleNoise([1, 2]).normal(big)["pos"]
    for i, n in enumerate(sizes):
        assert torch.equal(za[i, :n], zb[i, :n])


def test_noise_statistics_are_standard_normal():
    s = State({"x": torch.zeros(2000, 50, dtype=torch.float64)}, 2000)
    z = ExampleNoise(range(2000)).normal(s)["x"]
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1.0) < 0.01
    # fourth moment of a standard normal is 3
    assert abs(float(z.pow(4).mean()) - 3.0) < 0.05
    # no correlation between neighbouring entries or neighbouring examples
    assert abs(float((z[:, 1:] * z[:, :-1]).mean())) < 0.01
    assert abs(float((z[1:] * z[:-1]).mean())) < 0.01


def test_zero_mean_noise_lives_in_the_subspace_with_unit_variance():
    s = graph_state(sizes=[6] * 400)
    z = ExampleNoise(range(400)).normal(s)
    assert s.like(z.fields).project()["pos"].sub(z["pos"]).abs().max() < 1e-12
    # E|Pz|^2 = (N-1) d
    per_graph = s.layout("pos").sum_per_example(z["pos"].pow(2))
    assert float(per_graph.mean()) == pytest.approx(5 * 3, rel=0.05)


def test_concat_and_select_round_trip():
    s = graph_state()
    back = State.concat([s.select([0, 1]), s.select([2, 3, 4])])
    for k in s.fields:
        assert torch.equal(back[k], s[k]) and torch.equal(back.index[k], s.index[k])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: State({"x": torch.zeros(3, 2)}, 4), "leading dimension 3"),
        (lambda: State({"pos": torch.zeros(5, 3)}, 2, index={"pos": torch.zeros(4, dtype=torch.long)}), "4 entries but the field has 5 rows"),
        (lambda: State({"pos": torch.zeros(5, 3)}, 2, index={"pos": torch.zeros(5)}), "1-D long"),
        (lambda: State({"x": torch.zeros(2, 3)}, 2, masks={"x": torch.ones(2, 4, dtype=torch.bool)}), "not broadcastable"),
        (lambda: State({"x": torch.zeros(2, 3)}, 2, masks={"x": torch.ones(2, 3)}), "must be bool"),
        (lambda: State({"x": torch.zeros(2, 3)}, 2, masks={"y": torch.ones(2, dtype=torch.bool)}), "unknown field 'y'"),
        (lambda: State({"x": torch.tensor(1.0)}, 1), "at least one dimension"),
        (lambda: State({"x": [1, 2]}, 2), "torch.Tensor"),
    ],
)
def test_layout_errors_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_value_errors_name_the_field():
    with pytest.raises(ValueError, match="field 'x' contains NaN"):
        State({"x": torch.tensor([[0.0, math.nan]])}, 1).validate()
    with pytest.raises(ValueError, match="field 'x' contains inf"):
        State({"x": torch.tensor([[0.0, math.inf]])}, 1).validate()
    with pytest.raises(ValueError, match="field 'x' must be a floating-point"):
        State({"x": torch.tensor([[1, 2]])}, 1).validate()
    with pytest.raises(ValueError, match="outside"):
        State({"p": torch.zeros(3, 2)}, 2, index={"p": torch.tensor([0, 1, 2])}).validate()
    with pytest.raises(ValueError, match="sorted"):
        State({"p": torch.zeros(3, 2)}, 2, index={"p": torch.tensor([1, 0, 1])}).validate()
    with pytest.raises(ValueError, match="different fields"):
        State({"x": torch.zeros(1, 2)}, 1) + State({"y": torch.zeros(1, 2)}, 1)
    with pytest.raises(ValueError, match="3 seeds but the batch has 2"):
        ExampleNoise([1, 2, 3]).normal(State({"x": torch.zeros(2, 2)}, 2))
    with pytest.raises(ValueError, match="non-negative"):
        ExampleNoise([-1])


def test_euclidean_mask_zeroes_padding():
    s = State({"x": torch.ones(2, 4)}, 2, masks={"x": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)})
    assert s.project()["x"].sum().item() == 5.0
    assert s.dof().tolist() == [2.0, 3.0]
    assert Euclidean() == Euclidean() and ZeroMean() != Euclidean()
