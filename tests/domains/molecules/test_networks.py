"""E(3)-equivariant molecule networks (EGNN, e3nn) and the graph builders: symmetries, batching,
conditioning, radius graphs. Tiny sizes; float64 where precision matters."""

import copy

import pytest
import torch

from sciffusion.core.parameterisation import Denoiser
from sciffusion.core.process import VPCosine
from sciffusion.core.spaces import ZeroMean
from sciffusion.core.state import State
from sciffusion.domains.molecules.e3nn_net import E3NNDynamics, build_e3nn
from sciffusion.domains.molecules.egnn import EGNNDynamics, build_egnn, count_parameters
from sciffusion.domains.molecules.graph import (brute_force_radius_edges, fully_connected_edges,
                                                radius_edges)

SIZES = (4, 7, 2)
F = 6  # one-hot over 5 elements / 4, atomic number / 10
P = 2  # conditioning properties

CONFIGS = {
    "egnn": lambda: build_egnn({"network": "egnn", "hidden": 16, "layers": 2, "sublayers": 2,
                                "coord_init_gain": 1.0}, F, P),
    "egnn_radius": lambda: build_egnn({"hidden": 16, "layers": 2, "edges": "radius", "cutoff": 2.0,
                                       "distance_embedding": 3, "time_embedding": 4, "coord_init_gain": 1.0,
                                       "smooth_cutoff": True}, F, P),
    "e3nn": lambda: build_e3nn({"scalars": 8, "vectors": 4, "layers": 2, "num_basis": 6, "radial_hidden": 8}, F, P),
}


def build64(make):
    """Build in float64: e3nn computes its Clebsch-Gordan buffers in the default dtype at
    construction, so a float32-built network cast with .double() is only ~1e-9 equivariant."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return make().double()
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def net(request):
    torch.manual_seed(0)
    return build64(CONFIGS[request.param]).eval()


def make_batch(sizes=SIZES, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    n = int(index.numel())
    pos = torch.randn(n, 3, generator=g, dtype=dtype) * 1.5
    types = torch.randint(0, 5, (n,), generator=g)
    z = torch.tensor([1, 6, 7, 8, 9])[types]
    h = torch.cat([torch.nn.functional.one_hot(types, 5).to(dtype) / 4, z[:, None].to(dtype) / 10], dim=-1)
    x = State({"pos": pos, "h": h}, len(sizes), {"pos": index, "h": index}, spaces={"pos": ZeroMean()})
    x = x.project()
    t = torch.rand(len(sizes), generator=g, dtype=dtype)
    cond = {"properties": torch.randn(len(sizes), P, generator=g, dtype=dtype),
            "properties_mask": torch.tensor([True, False, True][: len(sizes)] + [True] * max(0, len(sizes) - 3))}
    return x, t, cond


def orthogonal(det: float, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def run(net, x, t, cond, pos=None):
    if pos is not None:
        x = x.like({"pos": pos, "h": x["h"]})
    with torch.no_grad():
        return net(x, t, cond)


def close(a, b, tol):
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


# ----------------------------------------------------------------------------- symmetries


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
def test_orthogonal_equivariance_float64(net, det):
    x, t, cond = make_batch()
    R = orthogonal(det)
    out = run(net, x, t, cond)
    out_r = run(net, x, t, cond, pos=x["pos"] @ R.T)
    assert float(out["pos"].abs().max()) > 1e-3  # a non-trivial output
    close(out_r["pos"], out["pos"] @ R.T, 1e-10)
    close(out_r["h"], out["h"], 1e-10)


def test_orthogonal_equivariance_float32(net):
    x, t, cond = make_batch(dtype=torch.float32)
    net32 = copy.deepcopy(net).float()  # the fixture stays float64 (float32 casts round e3nn's buffers)
    R = orthogonal(-1.0, seed=3, dtype=torch.float32)
    out = run(net32, x, t, cond)
    out_r = run(net32, x, t, cond, pos=x["pos"] @ R.T)
    close(out_r["pos"], out["pos"] @ R.T, 2e-5)
    close(out_r["h"], out["h"], 2e-5)
    centre = torch.zeros(len(SIZES), 3).index_add(0, x.index["pos"], out["pos"])
    centre = centre / torch.tensor(SIZES, dtype=torch.float32)[:, None]
    assert float(centre.abs().max()) < 1e-6 * max(1.0, float(out["pos"].abs().max()))


def test_translation_invariance(net):
    x, t, cond = make_batch()
    shifts = torch.randn(len(SIZES), 3, dtype=torch.float64) * 5
    out = run(net, x, t, cond)
    out_s = run(net, x, t, cond, pos=x["pos"] + shifts[x.index["pos"]])
    close(out_s["pos"], out["pos"], 1e-10)
    close(out_s["h"], out["h"], 1e-10)


def test_permutation_equivariance(net):
    x, t, cond = make_batch()
    g = torch.Generator().manual_seed(5)
    perm, start = [], 0
    for n in SIZES:
        perm.append(start + torch.randperm(n, generator=g))
        start += n
    perm = torch.cat(perm)
    xp = x.like({"pos": x["pos"][perm], "h": x["h"][perm]})
    out = run(net, x, t, cond)
    out_p = run(net, xp, t, cond)
    close(out_p["pos"], out["pos"][perm], 1e-10)
    close(out_p["h"], out["h"][perm], 1e-10)


def test_zero_centre_of_mass(net):
    x, t, cond = make_batch()
    out = run(net, x, t, cond)
    centre = torch.zeros(len(SIZES), 3, dtype=torch.float64).index_add(0, x.index["pos"], out["pos"])
    assert float(centre.abs().max()) < 1e-12
    assert out["h"].shape == x["h"].shape and out["pos"].shape == x["pos"].shape


def test_batching_independence(net):
    x, t, cond = make_batch()
    out = run(net, x, t, cond)
    order = [2, 0, 1]
    sub = x.select(order)
    sub_cond = {k: v[order] for k, v in cond.items()}
    out_sub = run(net, sub, t[order], sub_cond)
    for new, old in enumerate(order):
        rows_old = x.index["pos"] == old
        rows_new = sub.index["pos"] == new
        close(out_sub["pos"][rows_new], out["pos"][rows_old], 1e-10)
        close(out_sub["h"][rows_new], out["h"][rows_old], 1e-10)
    alone = run(net, x.select([1]), t[1:2], {k: v[1:2] for k, v in cond.items()})
    close(alone["pos"], out["pos"][x.index["pos"] == 1], 1e-10)


def test_conditioning_and_mask(net):
    x, t, _ = make_batch()
    B = len(SIZES)
    a, b = torch.randn(B, P, dtype=torch.float64), torch.randn(B, P, dtype=torch.float64)
    on, off = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    out_a = run(net, x, t, {"properties": a, "properties_mask": on})
    out_b = run(net, x, t, {"properties": b, "properties_mask": on})
    assert float((out_a["h"] - out_b["h"]).abs().max()) > 1e-6
    assert float((out_a["pos"] - out_b["pos"]).abs().max()) > 1e-8
    off_a = run(net, x, t, {"properties": a, "properties_mask": off})
    off_b = run(net, x, t, {"properties": b, "properties_mask": off})
    none = run(net, x, t, None)
    close(off_a["h"], off_b["h"], 1e-12)
    close(off_a["pos"], off_b["pos"], 1e-12)
    close(none["h"], off_a["h"], 1e-12)
    scalar_null = run(net, x, t, {"properties": 0.0, "properties_mask": False})  # the domain's null_condition
    close(scalar_null["h"], off_a["h"], 1e-12)
    close(scalar_null["pos"], off_a["pos"], 1e-12)
    assert float((off_a["h"] - out_a["h"]).abs().max()) > 1e-6  # the flag itself is seen


def test_time_changes_output_and_gradients_flow(net):
    x, t, cond = make_batch()
    with torch.no_grad():
        o1, o2 = net(x, t, cond), net(x, 1 - t, cond)
    assert float((o1["h"] - o2["h"]).abs().max()) > 1e-6
    net.zero_grad()
    out = net(x, t, cond)
    (out["pos"].pow(2).sum() + out["h"].pow(2).sum()).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    net.zero_grad()


def test_runs_under_bf16_autocast(net):
    x, t, cond = make_batch(dtype=torch.float32)
    net32 = copy.deepcopy(net).float()
    with torch.no_grad():
        ref = net32(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net32(x, t, cond)
    assert out["pos"].dtype == torch.float32 and out["h"].dtype == torch.float32
    close(out["h"], ref["h"], 0.1)


def test_denoiser_contract(net):
    x, t, cond = make_batch()
    with torch.no_grad():
        x0 = Denoiser(net, VPCosine())(x, t, cond)
    assert set(x0.fields) == {"pos", "h"} and torch.isfinite(x0["pos"]).all()


# ----------------------------------------------------------------------------- radius vs full


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
def test_radius_mode_equals_full_mode_with_large_cutoff(kind):
    build = build_egnn if kind == "egnn" else build_e3nn
    small = {"hidden": 16, "layers": 2} if kind == "egnn" else {"scalars": 8, "vectors": 4, "layers": 2}
    torch.manual_seed(0)
    full = build64(lambda: build(small, F, 0))
    torch.manual_seed(0)
    radius = build64(lambda: build({**small, "edges": "radius", "cutoff": 1e3}, F, 0))
    x, t, _ = make_batch()
    a, b = run(full, x, t, None), run(radius, x, t, None)
    close(b["pos"], a["pos"], 1e-12)
    close(b["h"], a["h"], 1e-12)
    torch.manual_seed(0)
    tight = build64(lambda: build({**small, "edges": "radius", "cutoff": 1.0}, F, 0))
    assert float((run(tight, x, t, None)["h"] - a["h"]).abs().max()) > 1e-6


def test_smooth_cutoff_is_continuous_across_the_cutoff():
    torch.manual_seed(0)
    net = build64(lambda: build_egnn({"hidden": 16, "layers": 2, "edges": "radius", "cutoff": 2.0,
                                      "smooth_cutoff": True, "coord_init_gain": 1.0}, F, 0))
    x, t, _ = make_batch(sizes=(3,))
    base = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.3, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    outs = []
    for d in (2.0 - 1e-7, 2.0 + 1e-7):  # atom 2 enters / leaves atom 0's neighbourhood (and not atom 1's)
        pos = base.clone()
        pos[2, 0] = -d
        outs.append(run(net, x, t, None, pos=pos))
    close(outs[0]["h"], outs[1]["h"], 1e-6)
    close(outs[0]["pos"], outs[1]["pos"], 1e-6)


# ----------------------------------------------------------------------------- graphs


def test_fully_connected_edges_match_brute_force():
    sizes = torch.tensor([3, 0, 1, 5, 2])
    index = torch.repeat_interleave(torch.arange(5), sizes)
    row, col = fully_connected_edges(index, 5)
    pos = torch.zeros(len(index), 3)
    ref_row, ref_col = brute_force_radius_edges(pos, index, 1.0)
    assert torch.equal(row, ref_row) and torch.equal(col, ref_col)
    assert len(row) == int((sizes * (sizes - 1)).sum())


@pytest.mark.parametrize("max_pairs", [1 << 22, 64, 7, 1])
def test_radius_edges_match_brute_force(max_pairs):
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([5, 1, 0, 30, 12, 3])
    index = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    pos = torch.randn(len(index), 3, generator=g) * 2
    for r in (0.5, 2.0, 100.0):
        row, col = radius_edges(pos, index, r, batch_size=len(sizes), max_pairs=max_pairs)
        ref_row, ref_col = brute_force_radius_edges(pos, index, r)
        assert torch.equal(row, ref_row) and torch.equal(col, ref_col), (r, max_pairs)


def test_radius_edges_max_neighbours_keeps_nearest():
    g = torch.Generator().manual_seed(1)
    sizes = torch.tensor([9, 4, 12])
    index = torch.repeat_interleave(torch.arange(3), sizes)
    pos = torch.randn(len(index), 3, generator=g, dtype=torch.float64)
    k, r = 3, 2.5
    row, col = radius_edges(pos, index, r, max_neighbours=k, max_pairs=20)
    ref_row, ref_col = brute_force_radius_edges(pos, index, r)
    expected = set()
    for i in range(len(index)):
        js = ref_col[ref_row == i]
        d = (pos[js] - pos[i]).norm(dim=-1)
        expected |= {(i, int(j)) for j in js[torch.argsort(d)[:k]]}
    got = list(zip(row.tolist(), col.tolist()))
    assert set(got) == expected and got == sorted(got)


# ----------------------------------------------------------------------------- configuration


def test_default_egnn_is_edm_sized():
    net = build_egnn({}, F)
    n = count_parameters(net)
    assert 5_000_000 <= n <= 5_700_000, n  # EDM's QM9 network: about 5.3 M
    assert n == 5_339_663
    cfg = net.cfg
    assert (cfg["layers"], cfg["hidden"], cfg["attention"], cfg["coords_range"], cfg["edges"]) == (9, 256, True, 15.0, "full")
    assert isinstance(net, EGNNDynamics) and isinstance(build_e3nn({}, F), E3NNDynamics)


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="hidden_nf"):
        build_egnn({"hidden_nf": 8}, F)
    with pytest.raises(ValueError, match="lmaxx"):
        build_e3nn({"lmaxx": 1}, F)
    with pytest.raises(ValueError, match="edges"):
        x, t, _ = make_batch()
        build_egnn({"hidden": 8, "layers": 1, "edges": "knn"}, F).double()(x, t)


# ----------------------------------------------------------------------------- self-conditioning


def _with_estimate(x, seed=7):
    """x plus an x0 estimate ("sc:pos" zero-centred, "sc:h" type probabilities) of the same layout."""
    g = torch.Generator().manual_seed(seed)
    est = x.like({"pos": x["pos"] + torch.randn(x["pos"].shape, generator=g, dtype=x["pos"].dtype),
                  "h": torch.softmax(torch.randn(x["h"].shape, generator=g, dtype=x["h"].dtype), -1)}).project()
    return x.with_prefixed(est, "sc:")


@pytest.fixture(scope="module", params=["delta", "absolute"])
def sc_net(request):
    torch.manual_seed(0)
    return build64(lambda: build_egnn({"hidden": 16, "layers": 2, "coord_init_gain": 1.0,
                                       "position_output": request.param}, F, P, self_conditioning=True)).eval()


def _moved(x, fn):
    """x with fn applied to its two position fields (the state's and the estimate's)."""
    return x.like({**x.fields, "pos": fn(x["pos"]), "sc:pos": fn(x["sc:pos"])})


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
def test_self_conditioned_egnn_is_equivariant(sc_net, det):
    x, t, cond = make_batch()
    x = _with_estimate(x)
    R = orthogonal(det, seed=4)
    with torch.no_grad():
        out, out_r = sc_net(x, t, cond), sc_net(_moved(x, lambda p: p @ R.T), t, cond)
        shifts = torch.randn(len(SIZES), 3, dtype=torch.float64)[x.index["pos"]] * 3
        out_s = sc_net(_moved(x, lambda p: p + shifts), t, cond)
    assert float(out["pos"].abs().max()) > 1e-3
    close(out_r["pos"], out["pos"] @ R.T, 1e-10)
    close(out_r["h"], out["h"], 1e-10)
    close(out_s["pos"], out["pos"], 1e-10)  # the output is zero-centred: translations drop out
    close(out_s["h"], out["h"], 1e-10)


def test_the_estimate_reaches_the_output_and_batches_stay_independent(sc_net):
    x, t, cond = make_batch()
    a, b = _with_estimate(x, seed=7), _with_estimate(x, seed=8)
    with torch.no_grad():
        out_a, out_b = sc_net(a, t, cond), sc_net(b, t, cond)
        alone = sc_net(a.select([1]), t[1:2], {k: v[1:2] for k, v in cond.items()})
    assert float((out_a["pos"] - out_b["pos"]).abs().max()) > 1e-4  # the estimate is an input
    close(alone["pos"], out_a["pos"][a.index["pos"] == 1], 1e-10)
    close(alone["h"], out_a["h"][a.index["pos"] == 1], 1e-10)
