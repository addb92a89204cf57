"""The model card writer (domains/molecules/weights/ship.py): every fact it prints comes from the
checkpoint, the run's log, the samples folder or a measurement, and it refuses sources that do not
describe the checkpoint."""

import json
import platform
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

import sciffusion
from sciffusion import api
from sciffusion.core.checkpoint import load_checkpoint
from sciffusion.core.domain import resolve_config
from sciffusion.core.registry import get_domain
from sciffusion.domains.molecules.data import smiles_to_molecules
from sciffusion.domains.molecules.output import write_sdf

SHIP_PY = Path(sciffusion.__file__).resolve().parent / "domains" / "molecules" / "weights" / "ship.py"
SMILES = ["C", "N", "O", "CC", "CO", "CN", "C=O", "C#N", "CCO", "CCN", "CC=O", "C#C", "OC=O", "NC=O", "CCC",
          "CC(C)O", "CC#N", "COC", "CNC", "C1CC1"]


@pytest.fixture(scope="module")
def ship(load_script):
    return load_script("domains/molecules/weights/ship.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny molecules model trained on RDKit-built molecules, with its run folder and log."""
    tmp = tmp_path_factory.mktemp("ship")
    mols, _ = smiles_to_molecules(SMILES, seed=0, processes=1)
    sdf = write_sdf(tmp / "mols.sdf", mols * 3)
    run = tmp / "run"
    api.train("molecules", {"data": {"path": str(sdf)}, "model": {"hidden": 16, "layers": 2},
                            "train": {"steps": 20, "batch_size": 16, "ckpt_every": 20, "log_every": 10},
                            "sample": {"steps": 10, "batch_size": 8}}, run, device="cpu", progress=False)
    return run


def test_training_history_names_sessions_processes_devices_and_warm_restarts(ship):
    log = [{"step": 0, "event": "start", "world_size": 1, "device": "cpu"},
                  {"step": 100, "loss": 0.5, "lr": 1e-3, "elapsed": 60.0},
                  {"step": 200, "loss": 0.4, "lr": 5e-5, "elapsed": 120.0},
                  {"step": 200, "event": "resume", "world_size": 2, "device": "cuda:0"},
                  {"step": 300, "loss": 0.3, "lr": 9e-4, "elapsed": 600.0},
                  {"step": 300, "event": "resume", "world_size": 2, "device": "cuda:0"},  # killed before a step
                  {"step": 300, "event": "resume", "world_size": 2, "device": "cuda:0"},
                  {"step": 400, "loss": 0.2, "lr": 8e-4, "elapsed": 300.0}]  # as the trainer logs them
    text = ship.training_history(log)
    assert text.startswith("steps 0 to 200 in one process on cpu (2 min); "
                           "steps 200 to 400 in 2 processes under torchrun on cuda:0 (15 min, 2 sessions: "
                           "stopped and resumed 1 time)")
    assert "At step 200 the run was resumed with train.steps raised" in text and "5.0e-05 -> 9.0e-04" in text
    assert ship.training_history([]) == "the log records no training steps."
    curve = ship.loss_curve(log, points=3)
    assert curve.startswith("step 100: 0.500") and curve.endswith("step 400: 0.200")


def test_config_overrides_reproduce_the_shipped_config(ship):
    domain = get_domain("molecules")
    ckpt = load_checkpoint(domain.default_checkpoint())
    overrides = ship.config_overrides(domain, ckpt.config)
    assert "model.hidden=96" in overrides and "train.decay=cosine" in overrides
    assert not any(o.startswith("domain") for o in overrides)
    assert resolve_config(domain, overrides=overrides) == resolve_config(domain, base=ckpt.config)


def test_data_section_credits_qm9_and_names_the_installed_package(ship):
    ckpt = load_checkpoint(get_domain("molecules").default_checkpoint())
    text = ship.data_section(ckpt)
    assert "training split of 100,000 molecules" in text and "elements H C N O F, up to 29 atoms" in text
    assert f"`qm9pack` ({metadata.version('qm9pack')} where this card was made)" in text and "Ramakrishnan" in text


def test_sampling_setting_is_one_and_must_be_the_models_default(ship):
    row = {"sampler": "ddpm", "grid": "discrete", "steps": 50, "guidance": 0.0, "network_calls": 51}
    assert ship.sampling_of([row, dict(row)]) == row
    with pytest.raises(SystemExit, match="mixes 2 sampling settings"):
        ship.sampling_of([row, dict(row, steps=25, network_calls=26)])
    ckpt = load_checkpoint(get_domain("molecules").default_checkpoint())
    own = {k: ckpt.config["sample"][k] for k in ("sampler", "grid", "steps", "guidance")}
    ship.check_default(dict(row, **own), ckpt)  # the shipped model's own defaults
    with pytest.raises(SystemExit, match="not with the model's defaults"):
        ship.check_default(dict(row, **dict(own, sampler="dpmpp_2m")), ckpt)
    assert ship.parse_sweep(["ddpm:25", "heun:10:log_snr"]) == [{"sampler": "ddpm", "steps": 25},
                                                               {"sampler": "heun", "steps": 10, "grid": "log_snr"}]
    with pytest.raises(SystemExit, match="sampler:steps"):
        ship.parse_sweep(["ddpm"])


def test_card_end_to_end_from_the_checkpoint_log_samples_and_measurements(ship, tiny_run, tmp_path):
    ckpt = load_checkpoint(tiny_run)
    samples = api.sample(str(tiny_run), tmp_path / "samples", n=6, progress=False).out
    card_path = tmp_path / "card" / "MODEL_CARD.md"
    card_path.parent.mkdir()
    ship.main(["card", "--model", str(tiny_run), "--from", str(samples), "--log", str(tiny_run / "log.jsonl"),
               "--out", str(card_path), "--sweep", "ddpm:3", "--sweep-samples", "3"])
    card = card_path.read_text()
    assert not (ckpt.path / "MODEL_CARD.md").exists()  # --out is where the card goes
    assert f"EMA of step {ckpt.step}" in card and f"hash `{ckpt.hash[:16]}`" in card
    n_params = sum(v.numel() for v in ckpt.weights().values())
    assert f"{n_params:,} parameters" in card
    # the training history comes from the log
    assert "steps 0 to 20 in one process on cpu" in card and "step 20: " in card
    # the quality heading: DDPM on EDM's schedule (sigma(0) > 0) makes a final denoising call
    assert "(6 samples, ddpm on the discrete grid, 10 steps = 11 network calls)" in card
    measured = api.evaluate("molecules", [samples], checkpoint=tiny_run)
    assert f"| atom stability | {measured['atom_stability']:.2f} |" in card
    assert "| ddpm | discrete | 3 | 4 | 3 |" in card  # the sweep cell, with its counted calls
    run = json.loads((samples / "run.json").read_text())
    assert f"{run['files']:,} molecules in {run['seconds']:,.0f} s" in card
    assert platform.platform() in card and f"torch {torch.__version__}" in card


def test_card_refuses_sources_that_do_not_describe_the_checkpoint(ship, tiny_run, tmp_path):
    other = api.sample(str(tiny_run), tmp_path / "other", n=2, steps=4, progress=False).out
    out = tmp_path / "card.md"
    with pytest.raises(SystemExit, match="not with the model's defaults"):
        ship.main(["card", "--model", str(tiny_run), "--from", str(other), "--out", str(out)])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    cfg = json.loads((tiny_run / "config.json").read_text())
    cfg["model"]["hidden"] = 32
    (foreign / "config.json").write_text(json.dumps(cfg))
    (foreign / "log.jsonl").write_text((tiny_run / "log.jsonl").read_text())
    with pytest.raises(SystemExit, match="model or data config is not the checkpoint's"):
        ship.main(["card", "--model", str(tiny_run), "--log", str(foreign / "log.jsonl"), "--out", str(out)])
    shipped = api.sample("molecules", tmp_path / "shipped", n=1, steps=2, progress=False).out
    with pytest.raises(SystemExit, match=re.escape("were not made with the checkpoint")):
        ship.read_samples(shipped, load_checkpoint(tiny_run))
    assert not out.exists()
