"""bench/images.py: every study arm and speed case is a configuration the images domain accepts,
the arms differ only in their recipe (same network, batch and optimiser), and each sampler's call
budget is met exactly."""

import pytest

from sciffusion.core.domain import resolve_config
from sciffusion.core.registry import get_domain


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench/images.py")


def test_the_arms_share_everything_but_the_recipe(bench):
    dom = get_domain("images")
    cfgs = {arm: resolve_config(dom, bench.CONFIG, bench.BASE + over) for arm, (_, over, _) in bench.ARMS.items()}
    for cfg in cfgs.values():
        assert cfg["model"] == cfgs["vp_v"]["model"] and cfg["train"] == cfgs["vp_v"]["train"]
        assert cfg["train"]["decay"] == "none"
    assert len({(c["process"]["name"], c["objective"]["prediction"]) for c in cfgs.values()}) == len(cfgs)


def test_every_speed_case_resolves(bench):
    dom = get_domain("images")
    for name, model, data in bench.SPEED_CASES:
        cfg = resolve_config(dom, bench.CONFIG, model + data)
        assert cfg["model"]["network"] in name


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "ddim"])
def test_each_sampler_meets_its_call_budget(bench, sampler, tmp_path):
    """steps_for picks the most steps whose counted calls stay within the budget: exactly the
    budget for one-call steps on rectified flow (sigma(0) = 0: no final denoising call)."""
    from sciffusion import api

    run = tmp_path / "run"
    api.train("images", bench.CONFIG, run, progress=False,
              overrides=["model.channels=8", "model.mults=[1]", "model.res_blocks=1", "train.steps=1",
                         "train.batch_size=4"])
    from sciffusion.core.checkpoint import latest_checkpoint

    over, _ = bench.SAMPLERS[sampler]
    for calls in (5, 10):
        steps = bench.steps_for(latest_checkpoint(run), over + ["sample.grid=uniform"], calls)
        assert steps == (calls if sampler != "heun" else steps) and steps >= calls // 2


def test_the_super_resolution_bench_scores_against_the_originals_and_bicubic(bench, tmp_path, monkeypatch):
    """bench/images.py sr on a tiny x2 digits model: one row for bicubic and one per call budget,
    every sample paired with its original (nothing appended to RESULTS.md here)."""
    from sciffusion import api
    from sciffusion.core.checkpoint import latest_checkpoint

    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path / "cache"))
    appended = []
    monkeypatch.setattr(bench.common, "append_results", lambda section, text: appended.append(text))
    run = tmp_path / "sr"
    api.train("images", bench.CONFIG, run, progress=False,
              overrides=["model.channels=8", "model.mults=[1, 2]", "model.res_blocks=1", "train.steps=2",
                         "train.batch_size=4", "model.sr_factor=2"])
    bench.super_resolution(str(latest_checkpoint(run)), 6, [2], tmp_path / "out", [])
    rows = [ln for ln in appended[0].splitlines() if ln.startswith("| ")]
    assert rows[1].startswith("| bicubic | 0 |") and rows[2].startswith("| SR3 x2 (euler) | 2 |")
    assert len(list((tmp_path / "out").glob("*-euler-2-n6/0*.png"))) == 6
