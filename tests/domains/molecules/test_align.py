"""Equivariant OT alignment of prior noise with molecules (sciffusion.domains.molecules.align)."""

import itertools

import pytest
import torch

from sciffusion.domains.molecules.align import align_noise, assign_within_groups, kabsch_rotation

ELEMENTS = torch.tensor([1, 6, 7, 8, 9])                  # H C N O F
ELEMENT_P = torch.tensor([0.50, 0.35, 0.06, 0.08, 0.01])


def random_rotation(gen, dtype=torch.float64):
    """A Haar-random proper rotation (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def centred(v, index, batch_size):
    counts = torch.bincount(index, minlength=batch_size).clamp(min=1).to(v.dtype)
    mean = torch.zeros(batch_size, 3, dtype=v.dtype).index_add_(0, index, v) / counts[:, None]
    return v - mean[index]


def qm9_like_batch(batch_size, seed, dtype=torch.float64):
    """Synthetic QM9-sized molecules (8-27 atoms, H C N O F, anisotropic clouds of a few Angstrom
    in random orientations) with zero-CoM Gaussian noise: (x, z, elements, index)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(8, 28, (batch_size,), generator=gen)
    index = torch.repeat_interleave(torch.arange(batch_size), sizes)
    elements = ELEMENTS[torch.multinomial(ELEMENT_P, int(sizes.sum()), replacement=True, generator=gen)]
    parts = []
    for n in sizes.tolist():
        jitter = 1 + 0.2 * torch.rand(3, generator=gen, dtype=torch.float64)
        scale = torch.tensor([2.0, 1.3, 0.7], dtype=torch.float64) * jitter
        parts.append((torch.randn(n, 3, generator=gen, dtype=torch.float64) * scale) @ random_rotation(gen).T)
    x = centred(torch.cat(parts), index, batch_size)
    z = centred(torch.randn(x.shape, generator=gen, dtype=torch.float64), index, batch_size)
    return x.to(dtype), z.to(dtype), elements, index


def per_molecule_cost(x, z, index, batch_size):
    return torch.zeros(batch_size, dtype=x.dtype).index_add_(0, index, ((x - z) ** 2).sum(-1))


def rotate_per_molecule(v, rotations, index):
    return torch.einsum("aij,aj->ai", rotations[index], v)


# --------------------------------------------------------------------------------------------- Kabsch


@pytest.mark.parametrize("seed", range(5))
def test_kabsch_recovers_a_rotation(seed):
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    b = b - b.mean(0)
    q = random_rotation(gen)
    r = kabsch_rotation(b @ q.T, b)  # a_i = Q b_i
    assert torch.allclose(r, q, atol=1e-12, rtol=0)
    assert abs(float(torch.linalg.det(r)) - 1) < 1e-12


def test_kabsch_is_optimal_and_batched():
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(4, 10, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 10, 3, generator=gen, dtype=torch.float64)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = kabsch_rotation(a, b)
    assert r.shape == (4, 3, 3)
    for k in range(4):
        assert torch.equal(r[k], kabsch_rotation(a[k], b[k]))
        best = ((b[k] @ r[k].T - a[k]) ** 2).sum()
        others = torch.stack([random_rotation(gen) for _ in range(500)])
        assert bool((((b[k] @ others.transpose(1, 2) - a[k]) ** 2).sum((1, 2)) >= best).all())


def test_kabsch_stays_proper_when_the_best_orthogonal_map_is_a_reflection():
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(15, 3, generator=gen, dtype=torch.float64)
    b = b - b.mean(0)
    q = random_rotation(gen)
    mirror = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)) @ q.T
    a = b @ (random_rotation(gen) @ mirror).T + 0.01 * torch.randn(15, 3, generator=gen, dtype=torch.float64)
    a = a - a.mean(0)
    r = kabsch_rotation(a, b)
    assert abs(float(torch.linalg.det(r)) - 1) < 1e-12
    assert torch.allclose(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-12)

    def cost(m):
        return float(((b @ m.T - a) ** 2).sum())

    u, _, vh = torch.linalg.svd(a.T @ b)
    assert float(torch.linalg.det(u @ vh)) < 0 and cost(u @ vh) < cost(r) - 1  # the case is a reflection
    # No proper rotation does better: random ones, and small turns of R about every axis.
    assert all(cost(random_rotation(gen)) >= cost(r) for _ in range(500))
    for _ in range(200):
        w = 1e-3 * torch.randn(3, generator=gen, dtype=torch.float64)
        skew = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]], dtype=torch.float64)
        assert cost(torch.linalg.matrix_exp(skew) @ r) >= cost(r) - 1e-12


# ------------------------------------------------------------------------------------------ assignment


def scramble_within_groups(groups, gen):
    sigma = torch.arange(len(groups))
    for g in groups.unique():
        rows = (groups == g).nonzero().flatten()
        sigma[rows] = rows[torch.randperm(len(rows), generator=gen)]
    return sigma


@pytest.mark.parametrize("seed", range(5))
def test_assign_recovers_a_scrambling_within_groups(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 4, (20,), generator=gen)
    sigma = scramble_within_groups(groups, gen)
    z = x[sigma] + 1e-3 * torch.randn(20, 3, generator=gen, dtype=torch.float64)  # z_j ~ x_sigma(j)
    perm = assign_within_groups(x, z, groups)
    assert perm.dtype == torch.long
    assert torch.equal(perm, torch.argsort(sigma))  # z_perm(i) ~ x_i: perm = sigma^-1


def test_assign_never_crosses_groups():
    gen = torch.Generator().manual_seed(11)
    for _ in range(20):
        n = int(torch.randint(1, 30, (1,), generator=gen))
        x = torch.randn(n, 3, generator=gen)
        z = torch.randn(n, 3, generator=gen)
        groups = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (n,), generator=gen)]
        perm = assign_within_groups(x, z, groups)
        assert torch.equal(torch.sort(perm).values, torch.arange(n))
        assert torch.equal(groups[perm], groups)


@pytest.mark.parametrize("seed", range(6))
def test_assign_cost_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 7
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 2 + seed % 2, (n,), generator=gen)
    costs = [float(((x - z[list(p)]) ** 2).sum()) for p in itertools.permutations(range(n))
             if torch.equal(groups[list(p)], groups)]
    perm = assign_within_groups(x, z, groups)
    assert abs(float(((x - z[perm]) ** 2).sum()) - min(costs)) < 1e-12


# ------------------------------------------------------------------------------------------ align_noise


@pytest.fixture(scope="module")
def batch():
    x, z, elements, index = qm9_like_batch(64, seed=0)
    return x, z, elements, index, align_noise(x, z, elements, index, 64)


def test_align_never_increases_any_cost_and_reduces_the_mean_substantially(batch):
    x, z, _, index, out = batch
    assert torch.allclose(out.cost_before, per_molecule_cost(x, z, index, 64), rtol=1e-12, atol=0)
    assert torch.allclose(out.cost_after, per_molecule_cost(x, out.noise, index, 64), rtol=1e-12, atol=0)
    assert bool((out.cost_after <= out.cost_before).all())
    assert float(out.cost_after.mean()) < 0.45 * float(out.cost_before.mean())


def test_align_is_close_to_the_best_of_many_starts():
    """Against 24 random starting rotations per molecule, each alternated to convergence with the
    reference pieces (assign_within_groups, kabsch_rotation): within 8% on the mean. (The single
    'pairing' start alone is about 17% off on these molecules.)"""
    x, z, elements, index = qm9_like_batch(16, seed=21)
    out = align_noise(x, z, elements, index, 16)
    gen = torch.Generator().manual_seed(0)
    best = []
    for m in range(16):
        rows = index == m
        xm, zm, em = x[rows], z[rows], elements[rows]
        costs = []
        for _ in range(24):
            r = random_rotation(gen)
            for _ in range(5):
                perm = assign_within_groups(xm, zm @ r.T, em)
                r = kabsch_rotation(xm, zm[perm])
            costs.append(float(((xm - zm[perm] @ r.T) ** 2).sum()))
        best.append(min(costs))
    assert float(out.cost_after.mean()) < 1.08 * sum(best) / 16


def test_align_is_a_rotation_and_a_within_element_permutation_of_the_noise(batch):
    x, z, elements, index, out = batch
    perm, rot = out.perm, out.rotation
    assert perm.dtype == torch.long and rot.shape == (64, 3, 3)
    assert torch.equal(torch.sort(perm).values, torch.arange(len(x)))
    assert torch.equal(index[perm], index) and torch.equal(elements[perm], elements)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(64, dtype=torch.float64), atol=1e-12)
    # Undo it: R^T noise_i = z_perm(i).
    assert torch.allclose(rotate_per_molecule(out.noise, rot.transpose(1, 2), index), z[perm], atol=1e-12)
    # Independently of the returned rotation: the Gram matrix of each molecule's noise is that of
    # z permuted, and each (molecule, element) group keeps its multiset of norms.
    for m in range(64):
        rows = (index == m).nonzero().flatten()
        a, b = out.noise[rows], z[perm[rows]]
        assert torch.allclose(a @ a.T, b @ b.T, atol=1e-12)
        for e in elements[rows].unique():
            g = rows[elements[rows] == e]
            assert torch.allclose(torch.sort(out.noise[g].norm(dim=1)).values, torch.sort(z[g].norm(dim=1)).values,
                                  atol=1e-12)


def test_align_keeps_zero_centre_of_mass_and_ends_kabsch_aligned(batch):
    x, _, _, index, out = batch
    mean = torch.zeros(64, 3, dtype=torch.float64).index_add_(0, index, out.noise)
    assert float(mean.abs().max()) < 1e-12
    # The last step is a rotation: the returned noise is already Kabsch-aligned to x.
    eye = torch.eye(3, dtype=torch.float64)
    for m in range(64):
        rows = index == m
        assert torch.allclose(kabsch_rotation(x[rows], out.noise[rows]), eye, atol=1e-9)


def test_align_handles_float32_and_small_molecules():
    x, z, elements, index = qm9_like_batch(16, seed=5)
    out64 = align_noise(x, z, elements, index, 16)
    out32 = align_noise(x.float(), z.float(), elements, index, 16)
    assert out32.noise.dtype == out32.rotation.dtype == out32.cost_after.dtype == torch.float32
    assert torch.equal(out32.perm, out64.perm)
    assert torch.allclose(out32.noise.double(), out64.noise, atol=1e-5)
    # One atom; two atoms of two elements (no permutation); two hydrogens; an empty molecule; no elements.
    x = torch.tensor([[0.0, 0, 0], [0.7, 0, 0], [-0.7, 0, 0], [0.4, 0.3, 0], [-0.4, -0.3, 0]], dtype=torch.float64)
    z = torch.tensor([[0.0, 0, 0], [0, 0.5, 0.1], [0, -0.5, -0.1], [0.2, -0.6, 0.3], [-0.2, 0.6, -0.3]],
                     dtype=torch.float64)
    index = torch.tensor([0, 1, 1, 3, 3])
    elements = torch.tensor([6, 6, 8, 1, 1])
    for el in (elements, None):
        out = align_noise(x, z, el, index, 4)
        assert out.cost_after.shape == (4,) and float(out.cost_after[2]) == 0.0
        assert bool((out.cost_after <= out.cost_before).all())
        assert torch.allclose(out.cost_after, per_molecule_cost(x, out.noise, index, 4), atol=1e-12)
        assert torch.allclose(out.noise[0], z[0])
    assert torch.equal(align_noise(x, z, elements, index, 4).perm[:3], torch.arange(3))
    assert float(align_noise(x, z, elements, index, 4).cost_after[1]) == pytest.approx(2 * (0.7 - 0.26 ** 0.5) ** 2)


def test_align_rejects_an_unsorted_index():
    x, z, elements, index = qm9_like_batch(4, seed=1)
    with pytest.raises(ValueError, match="sorted"):
        align_noise(x, z, elements, index.flip(0), 4)


# ---------------------------------------------------------------------------------------- equivariance


@pytest.mark.parametrize("seed", range(3))
def test_aligned_noise_is_equivariant(seed):
    x, z, elements, index = qm9_like_batch(32, seed=100 + seed)
    ref = align_noise(x, z, elements, index, 32)
    gen = torch.Generator().manual_seed(seed)
    q = torch.stack([random_rotation(gen) for _ in range(32)])  # one rotation per molecule
    p = torch.stack([random_rotation(gen) for _ in range(32)])

    rx = align_noise(rotate_per_molecule(x, q, index), z, elements, index, 32)  # rotate the molecules
    assert torch.allclose(rx.cost_after, ref.cost_after, rtol=1e-9, atol=0)
    assert torch.allclose(rx.noise, rotate_per_molecule(ref.noise, q, index), atol=1e-8)

    rz = align_noise(x, rotate_per_molecule(z, p, index), elements, index, 32)  # rotate the noise
    assert torch.allclose(rz.cost_after, ref.cost_after, rtol=1e-9, atol=0)
    assert torch.allclose(rz.noise, ref.noise, atol=1e-8)

    sigma = scramble_within_groups(index * 100 + elements, gen)  # renumber atoms within elements
    px = align_noise(x[sigma], z[sigma], elements, index, 32)
    assert torch.equal(elements[sigma], elements)
    assert torch.allclose(px.cost_after, ref.cost_after, rtol=1e-9, atol=0)
    assert torch.allclose(px.noise, ref.noise[sigma], atol=1e-8)


# --------------------------------------------------------------------------------------- independence


def test_each_molecule_is_aligned_as_if_alone():
    x, z, elements, index = qm9_like_batch(24, seed=9)
    out = align_noise(x, z, elements, index, 24)
    starts = torch.cumsum(torch.bincount(index, minlength=24), 0) - torch.bincount(index, minlength=24)
    for m in range(24):
        rows = (index == m).nonzero().flatten()
        alone = align_noise(x[rows], z[rows], elements[rows], torch.zeros(len(rows), dtype=torch.long), 1)
        assert torch.equal(alone.noise, out.noise[rows])
        assert torch.equal(alone.perm + starts[m], out.perm[rows])
        assert torch.equal(alone.rotation[0], out.rotation[m])
        assert torch.equal(alone.cost_after[0], out.cost_after[m])
    # Another batch order: molecules reversed.
    order = torch.cat([(index == m).nonzero().flatten() for m in reversed(range(24))])
    rev = align_noise(x[order], z[order], elements[order], (23 - index)[order], 24)
    assert torch.equal(rev.noise, out.noise[order])
    assert torch.equal(rev.cost_after.flip(0), out.cost_after)
