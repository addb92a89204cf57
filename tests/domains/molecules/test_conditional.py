"""Property-conditional molecule generation end to end: per-molecule properties from SD tags (or
QM9) -> `sciffusion train ... data.properties=[...]` -> `sciffusion sample RUN
sample.properties.NAME=VALUE`, with the values recorded in each molecule's SD tags, clear errors for
every misuse, and checks that the condition actually reaches the network."""

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from sciffusion.core.domain import resolve_config

from sciffusion import api
from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain
from sciffusion.domains.molecules.data import load_sdf, load_user_dataset, smiles_to_molecules
from sciffusion.domains.molecules.domain import conditioning_order, requested_properties
from sciffusion.domains.molecules.output import write_sdf, write_xyz

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: more threads only add contention
SMILES = ["C", "N", "O", "CC", "CO", "CN", "C=O", "C#N", "CCO", "CCN", "CC=O", "C#C", "OC=O", "NC=O", "CCC",
          "CC(C)O", "CC#N", "COC", "CNC", "C1CC1", "C1CO1", "OCCO", "NCCO", "CC(N)=O", "CC(=O)O", "C=CC", "FC",
          "FCC", "OCC=O", "N#CC#N"]
PROPS = '["alpha", "Cv"]'  # deliberately not in sorted order (the network's input order is sorted)


def cli(*args, ok=True):
    p = subprocess.run([SCIFFUSION, *map(str, args)], capture_output=True, text=True, timeout=600, env=ENV)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def domain():
    return get_domain("molecules")


@pytest.fixture(scope="module")
def molecules():
    mols, skipped = smiles_to_molecules(SMILES, seed=0, processes=1)
    assert not skipped
    return mols


def tags_of(m):
    """Made-up but varied per-molecule properties, written as SD tags."""
    heavy = int((m.atomic_numbers > 1).sum())
    return {"alpha": 8.0 * heavy + 1.5 * m.num_atoms, "Cv": 3.0 * m.num_atoms - heavy}


@pytest.fixture(scope="module")
def sdf(molecules, tmp_path_factory):
    return write_sdf(tmp_path_factory.mktemp("data") / "mine.sdf", molecules * 2, [tags_of(m) for m in molecules] * 2)


@pytest.fixture(scope="module")
def run(sdf, tmp_path_factory):
    """A tiny conditional model trained through the CLI on the SDF file's <alpha> and <Cv> tags, with
    condition dropout (so classifier-free guidance is possible)."""
    out = tmp_path_factory.mktemp("cond") / "run"
    cli("train", "molecules", f"data.path={sdf}", f"data.properties={PROPS}", "objective.condition_dropout=0.3",
        "model.hidden=16", "model.layers=2", "train.steps=20", "train.batch_size=16", "train.ckpt_every=20",
        "--out", out, "--no-progress")
    return out


# ------------------------------------------------------------------------------------- data


def test_sd_tag_properties_are_read_and_checked(tmp_path, molecules):
    mols = molecules[:5]
    tags = [{"alpha": 10.0}, {"other": 1.0}, {"alpha": "large"}, {"alpha": "nan"}, {"alpha": 12.5}]
    path = write_sdf(tmp_path / "some.sdf", mols, tags)
    good, skipped = load_sdf(path, properties=["alpha"], skip_bad=True)
    assert [m.properties["alpha"] for m in good] == [10.0, 12.5]
    assert len(skipped) == 3
    assert all("some.sdf" in s and "property 'alpha'" in s for s in skipped)
    assert "record 2" in skipped[0] and "no SD tag <alpha>" in skipped[0]
    assert "record 3" in skipped[1] and "not a number: 'large'" in skipped[1]
    assert "record 4" in skipped[2] and "not a finite number" in skipped[2]
    with pytest.raises(InputError, match=r"some\.sdf: record 2 .*property 'alpha'.*no SD tag <alpha>"):
        load_sdf(path, properties=["alpha"])
    assert len(load_sdf(path)[0]) == 5  # without properties asked for, tags are not checked
    # XYZ and SMILES files carry no properties
    xyz = write_xyz(tmp_path / "some.xyz", mols)
    with pytest.raises(InputError, match=r"some\.xyz: data\.properties .* SD tags"):
        load_user_dataset(xyz, properties=["alpha"])


def test_skip_bad_counts_records_without_the_property(domain, tmp_path, molecules):
    path = write_sdf(tmp_path / "some.sdf", molecules[:12], [{"alpha": float(i)} for i in range(11)] + [{}])
    cfg = {"path": str(path), "properties": ["alpha"], "skip_bad": True, "valid_every": 0}
    with pytest.warns(UserWarning, match=r"skipped 1 bad record.*record 12.*property 'alpha'"):
        train = domain.load_dataset(cfg, "train")
    assert len(train) == 11
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, for the training split
        domain.load_dataset(cfg, "valid")


def test_data_config_normalises_and_orders_properties(domain, molecules):
    import torch

    cfg = domain.default_config()
    cfg["data"]["properties"] = ["mu", "alpha"]  # not sorted
    mols = copy.deepcopy(molecules[:8])
    for i, m in enumerate(mols):
        m.properties = {"mu": float(i), "alpha": 50.0 + 10.0 * (i % 3)}
    dc = domain.data_config(mols, cfg)
    mu = np.arange(8.0)
    assert dc["properties"]["mu"] == pytest.approx({"mean": mu.mean(), "mad": np.abs(mu - mu.mean()).mean()})
    # checkpoints store data_config as JSON with sorted keys: the columns must not move
    stored = json.loads(json.dumps(dc, sort_keys=True))
    assert conditioning_order(dc) == conditioning_order(stored) == ["alpha", "mu"]
    a, b = domain.collate(mols, dc).cond["properties"], domain.collate(mols, stored).cond["properties"]
    assert torch.equal(a, b)
    assert torch.allclose(a[:, 1], torch.tensor((mu - mu.mean()) / np.abs(mu - mu.mean()).mean(), dtype=torch.float32))
    # a property without spread cannot condition anything; a molecule without a value is named
    for m in mols:
        m.properties["mu"] = 2.0
    with pytest.raises(InputError, match="same value"):
        domain.data_config(mols, cfg)
    del mols[3].properties["mu"]
    with pytest.raises(InputError, match=f"{mols[3].name!r} has no numeric value for property 'mu'"):
        domain.data_config(mols, cfg)
    cfg["data"]["properties"] = ["mu", "mu"]
    with pytest.raises(InputError, match="twice"):
        domain.data_config(mols, cfg)


def test_qm9_property_names_are_checked_before_loading(domain):
    with pytest.raises(InputError, match="QM9 has no property 'polarizability'.*mu, alpha, homo, lumo, gap.*Cv"):
        domain.load_dataset({"source": "qm9", "properties": ["polarizability"]}, "train")


def test_requested_properties_are_checked(domain):
    dc = {"properties": {"alpha": {"mean": 70.0, "mad": 5.0}, "Cv": {"mean": 30.0, "mad": 3.0}}}
    cfg = {"sample": {"properties": {"alpha": 75, "Cv": 27.5}}, "objective": {"condition_dropout": 0.0}}
    assert requested_properties(cfg, dc) == {"alpha": 75.0, "Cv": 27.5}
    with pytest.raises(InputError, match="condition_dropout > 0"):  # the engine's rule, checked with the config
        resolve_config(domain, {"sample": {"guidance": 2.0}})
    with pytest.raises(InputError, match="sample.properties.Cv=VALUE"):
        requested_properties({"sample": {"properties": {"alpha": 75}}}, dc)
    with pytest.raises(InputError, match="must be a finite number"):
        requested_properties({"sample": {"properties": {"alpha": 75, "Cv": "warm"}}}, dc)
    with pytest.raises(InputError, match="trained without properties"):
        requested_properties(cfg, {"properties": {}})
    assert requested_properties({"sample": {"properties": {}}}, {"properties": {}}) is None


# ------------------------------------------------------------------------------- generation


def test_sample_cli_conditions_and_records_the_values(run, tmp_path):
    assert sorted(api.info(run)["data_config"]["properties"]) == ["Cv", "alpha"]
    out = tmp_path / "gen"
    cli("sample", run, "-n", "4", "--steps", "5", "--out", out, "--no-progress",
        "sample.properties.alpha=70", "sample.properties.Cv=25.5")
    files = sorted(out.glob("*.sdf"))
    assert len(files) == 4
    for f in files:
        (m,), _ = load_sdf(f, properties=["alpha", "Cv"], require_explicit_h=False)
        assert m.properties["alpha"] == 70.0 and m.properties["Cv"] == 25.5
        assert "> <alpha>\n70.0\n" in f.read_text()
    assert json.loads((out / "run.json").read_text())["config"]["sample"]["properties"] == {"alpha": 70, "Cv": 25.5}
    # a conditional model without values: one clear line, exit 1
    p = cli("sample", run, "-n", "2", "--steps", "2", "--out", tmp_path / "none", "--no-progress", ok=False)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and "sample.properties.Cv=VALUE sample.properties.alpha=VALUE" in p.stderr


def positions(folder):
    return {f.name: load_sdf(f, require_explicit_h=False)[0][0] for f in sorted(Path(folder).glob("*.sdf"))}


def gen(run, out, alpha, cv, **kw):
    api.sample(run, out, n=6, steps=5, progress=False,
               overrides=[f"sample.properties.alpha={alpha}", f"sample.properties.Cv={cv}"], **kw)
    return positions(out)


def test_the_condition_reaches_the_network(run, tmp_path):
    """Same seeds: the same values give identical molecules, very different values different ones
    (the only difference between the runs is the condition the network sees)."""
    low = gen(run, tmp_path / "low", 30, 10)
    gen(run, tmp_path / "again", 30, 10)
    high = gen(run, tmp_path / "high", 140, 60)
    assert len(low) == 6
    for name in low:
        assert (tmp_path / "low" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
        a, b = low[name], high[name]
        assert a.num_atoms == b.num_atoms  # the size comes from the seed alone
        assert np.abs(a.positions - b.positions).max() > 1e-3, name
        assert a.properties["alpha"] == 30.0 and b.properties["alpha"] == 140.0


def test_classifier_free_guidance_with_properties(run, tmp_path):
    plain = gen(run, tmp_path / "plain", 30, 10)
    guided = gen(run, tmp_path / "guided", 30, 10, guidance=2.0)
    for name in plain:
        assert (guided[name].properties["alpha"], guided[name].properties["Cv"]) == (30.0, 10.0)
        assert np.abs(plain[name].positions - guided[name].positions).max() > 1e-3, name
    assert json.loads((tmp_path / "guided" / "manifest.jsonl").read_text().splitlines()[0])["guidance"] == 2.0


def test_sampling_misuse_is_a_clear_error(run, tmp_path):
    with pytest.raises(InputError, match="unknown property 'beta'.*conditioned on Cv, alpha"):
        api.sample(run, tmp_path / "a", n=1, steps=2, progress=False,
                   overrides=["sample.properties.alpha=70", "sample.properties.Cv=20", "sample.properties.beta=1"])
    with pytest.raises(InputError, match="give a value for each.*sample.properties.Cv=VALUE"):
        api.sample(run, tmp_path / "b", n=1, steps=2, progress=False, overrides=["sample.properties.alpha=70"])
    with pytest.raises(InputError, match="sample.properties: must be a table"):
        api.sample(run, tmp_path / "c", n=1, steps=2, progress=False, overrides=["sample.properties=70"])
    if get_domain("molecules").default_checkpoint() is not None:  # the shipped QM9 model is unconditional
        with pytest.raises(InputError, match="trained without properties.*leave out sample.properties"):
            api.sample("molecules", tmp_path / "d", n=1, steps=2, progress=False,
                       overrides=["sample.properties.alpha=70"])


def test_training_stops_on_a_record_without_the_property(tmp_path, molecules):
    bad = write_sdf(tmp_path / "bad.sdf", molecules * 2, [{"alpha": 1.0 + i} for i in range(59)] + [{"alpha": "n/a"}])
    p = cli("train", "molecules", f"data.path={bad}", 'data.properties=["alpha"]', "model.hidden=16",
            "model.layers=2", "train.steps=2", "--out", tmp_path / "run", "--no-progress", ok=False)
    assert p.returncode == 1
    assert "bad.sdf: record 60" in p.stderr and "property 'alpha'" in p.stderr and "'n/a'" in p.stderr


# ------------------------------------------------------------------------------------- QM9


@pytest.mark.slow
def test_qm9_conditional_training_and_sampling(tmp_path):
    """EDM's six conditioning properties from qm9pack (raw QM9 units: Hartree for homo/lumo/gap).
    The loader has no subset option, so this reads the whole training split (about 10 s)."""
    from sciffusion.domains.molecules.data import qm9_source_dir

    if qm9_source_dir() is None:
        pytest.skip('qm9pack is not installed (pip install "sciffusion[qm9]")')
    run = tmp_path / "run"
    cli("train", "molecules", 'data.properties=["alpha", "gap", "homo", "lumo", "mu", "Cv"]', "model.hidden=16",
        "model.layers=2", "train.steps=2", "train.batch_size=8", "--out", run, "--no-progress")
    props = json.loads(cli("info", run, "--json").stdout)["data_config"]["properties"]
    assert sorted(props) == ["Cv", "alpha", "gap", "homo", "lumo", "mu"]
    assert props["alpha"]["mean"] == pytest.approx(75.27, abs=0.05) and props["gap"]["mean"] == pytest.approx(0.252, abs=0.002)
    values = {"alpha": 70, "gap": 0.25, "homo": -0.24, "lumo": 0.01, "mu": 2.7, "Cv": 31.6}
    out = tmp_path / "gen"
    cli("sample", run, "-n", "2", "--steps", "3", "--out", out, "--no-progress",
        *[f"sample.properties.{k}={v}" for k, v in values.items()])
    for f in sorted(out.glob("*.sdf")):
        (m,), _ = load_sdf(f, require_explicit_h=False)
        assert {k: m.properties[k] for k in values} == pytest.approx(values)
