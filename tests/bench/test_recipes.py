"""The recipe study's arms (bench/recipes.py): every arm is a configuration the molecules domain
accepts, each n-call budget costs exactly n network calls, and the table's error bars are the
binomial standard error."""

import math

import pytest

from sciffusion.core.domain import resolve_config
from sciffusion.core.registry import get_domain



@pytest.fixture(scope="module")
def recipes(load_script):
    return load_script("bench/recipes.py")


@pytest.fixture(scope="module")
def molecules():
    return get_domain("molecules")


def test_every_arm_resolves(recipes, molecules):
    for arm in recipes.ARMS:
        cfg = resolve_config(molecules, overrides=recipes.overrides(arm))
        assert cfg["model"]["hidden"] == 96 and cfg["train"]["batch_size"] == 64, arm
        assert cfg["train"]["decay"] == "none", arm


def test_arms_differ_where_they_say(recipes, molecules):
    edm = resolve_config(molecules, overrides=recipes.overrides("edm"))
    every = resolve_config(molecules, overrides=recipes.overrides("all"))
    assert (edm["process"]["name"], edm["objective"]["prediction"]) == ("polynomial", "eps")
    assert (every["process"]["name"], every["objective"]["prediction"]) == ("rectified_flow", "x0")
    assert every["data"]["atom_types"] == "categorical" and every["objective"]["self_conditioning"] == 0.5
    assert resolve_config(molecules, overrides=recipes.overrides("fm+velocity"))["objective"]["prediction"] == "velocity"


def test_call_budget_overrides(recipes, molecules):
    edm = resolve_config(molecules, overrides=recipes.overrides("edm"))
    fm = resolve_config(molecules, overrides=recipes.overrides("fm"))
    # EDM's grid ends at sigma(0) > 0: n - 1 steps and the final denoising call
    assert recipes.sampler_for_calls(edm, 20) == ["sample.steps=19"]
    assert "sample.steps=20" in recipes.sampler_for_calls(fm, 20)


def test_standard_error_is_binomial(recipes):
    assert recipes.standard_error(50.0, 100) == pytest.approx(5.0)
    assert recipes.standard_error(3.0, 1000) == pytest.approx(100 * math.sqrt(0.03 * 0.97 / 1000))
    assert recipes.standard_error(0.0, 1000) == 0.0


def test_unknown_arm_is_refused(recipes):
    with pytest.raises(SystemExit, match="unknown arm"):
        recipes.overrides("edm+typo")


def test_training_minutes_add_up_over_resumed_sessions(recipes):
    log = [{"step": 0, "event": "start"}, {"step": 100, "elapsed": 60.0}, {"step": 200, "elapsed": 120.0},
           {"step": 150, "event": "resume"}, {"step": 250, "elapsed": 30.0}]
    assert recipes.training_minutes(log) == {100: 1.0, 200: 2.0, 250: 2.5}
