"""The flow-matching recipe's pieces in the molecules domain: categorical atom types, noise
aligned to each molecule, self-conditioning, sampled jointly; symmetries and seed independence."""

import numpy as np
import pytest
import torch

from sciffusion.core.checks import check_seed_independence
from sciffusion.core.domain import resolve_config
from sciffusion.core.registry import get_domain
from sciffusion.core.sampling import SampleSpec, generate_batch
from sciffusion.core.spaces import Categorical
from sciffusion.core.train import example_noise
from sciffusion.domains.molecules.align import transport_cost
from sciffusion.domains.molecules.types import Molecule

RECIPE = ["model.hidden=16", "model.layers=2", "model.position_output=absolute", "process.name=rectified_flow",
          "objective.prediction=x0", "objective.time_sampler=beta", "objective.time_params=[1.0, 2.0]",
          "objective.self_conditioning=0.5", "data.atom_types=categorical", "data.align=ot",
          "sample.sampler=euler", "sample.grid=uniform", "sample.steps=6"]


def _molecules(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(4, 12))
        z = rng.choice([1, 6, 7, 8, 9], size=k, p=[0.5, 0.3, 0.08, 0.1, 0.02])
        out.append(Molecule(z, rng.standard_normal((k, 3)) * 1.3, name=f"m{i}"))
    return out


@pytest.fixture(scope="module")
def setup():
    dom = get_domain("molecules")
    cfg = resolve_config(dom, overrides=RECIPE)
    mols = _molecules()
    return dom, cfg, mols, dom.data_config(mols, cfg)


def test_categorical_types_collate_as_one_hot_with_a_mask_class(setup):
    dom, cfg, mols, dc = setup
    assert dc["representation"] == {"atom_types": "categorical", "type_power": 1.0}
    b = dom.collate(mols[:3], dc)
    h = b.x0["h"]
    assert h.shape[1] == len(dc["atomic_numbers"]) + 1 and b.x0.space("h") == Categorical(len(dc["atomic_numbers"]))
    assert bool((h.sum(1) == 1).all()) and not bool(h[:, -1].any())  # data is never masked
    got = [dc["atomic_numbers"][int(c)] for c in h[:, :-1].argmax(1)]
    assert got == [int(z) for m in mols[:3] for z in m.atomic_numbers]
    tpl = dom.template([0, 1], cfg, dc)
    assert tpl.x0.space("h") == b.x0.space("h") and tpl.x0["h"].shape[1] == h.shape[1]


def test_aligned_noise_is_closer_and_stays_a_rotation_and_permutation_of_the_draw(setup):
    dom, cfg, mols, dc = setup
    x0 = dom.collate(mols, dc).x0
    eps = example_noise(x0, range(len(mols)), 3)
    aligned = dom.align_noise(x0, eps, cfg)
    idx = x0.index["pos"]
    before = transport_cost(x0["pos"].double(), eps["pos"].double(), idx, x0.batch_size)
    after = transport_cost(x0["pos"].double(), aligned["pos"].double(), idx, x0.batch_size)
    assert bool((after <= before + 1e-9).all()) and float(after.sum()) < 0.7 * float(before.sum())
    assert torch.equal(aligned["h"], eps["h"])  # the type noise stays with its row
    for i in range(x0.batch_size):  # same Gram spectrum: only a rotation (and a permutation) away
        a = eps["pos"][idx == i].double()
        b = aligned["pos"][idx == i].double()
        assert torch.allclose(torch.linalg.eigvalsh(a.T @ a), torch.linalg.eigvalsh(b.T @ b), atol=1e-4)
    assert dom.align_noise(x0, eps, resolve_config(dom, overrides=["data.align=none"])) is eps


def test_the_recipe_samples_with_one_hot_types_and_depends_on_the_seed_alone(setup):
    dom, cfg, mols, dc = setup
    torch.manual_seed(0)
    den = dom.build_denoiser(cfg, dc).eval()
    assert den.self_conditioning and den.process.name == "rectified_flow"
    out = generate_batch(dom, den, [0, 1, 2], cfg, dc, SampleSpec.from_config(cfg["sample"], den.process))
    h = out.x0["h"]
    assert bool((h.sum(1) == 1).all()) and not bool(h[:, -1].any())  # every atom got a type
    assert out.network_calls == 6
    assert len(dom.decode(out.x0, out.cond, dc)) == 3
    check_seed_independence(dom, den, cfg, dc, seeds=[0, 4])


def test_the_recipe_trains(setup, tmp_path, monkeypatch):
    """A few optimizer steps of the whole recipe (alignment, self-conditioning, categorical loss)
    on a user SDF-free dataset: finite losses, a checkpoint that samples."""
    from sciffusion.core.train import load_denoiser, train

    dom, cfg, mols, dc = setup
    monkeypatch.setattr(type(dom), "load_dataset", lambda self, data_cfg, split: mols)
    cfg = resolve_config(dom, overrides=RECIPE + ["train.steps=3", "train.batch_size=4", "train.log_every=1",
                                                  "train.ckpt_every=0", "train.warmup_steps=2"])
    res = train(dom, cfg, tmp_path / "run", device="cpu", progress=False)
    den, ckpt = load_denoiser(res.checkpoint, dom)
    assert den.self_conditioning and np.isfinite(res.metrics["loss"])
    out = generate_batch(dom, den, [5], ckpt.config, ckpt.data_config, SampleSpec.from_config(ckpt.config["sample"], den.process))
    assert out.x0.batch_size == 1
