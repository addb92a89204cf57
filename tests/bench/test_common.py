"""The benchmarks' shared sampling helpers (bench/common.py): they run the one sampling path and
report the network calls it counted."""

import dataclasses

import pytest
import torch

from sciffusion.core.domain import resolve_config
from sciffusion.core.sampling import SampleSpec, generate_batch

DATA_CONFIG = {"size_counts": [0, 0, 0, 25, 25, 25, 25], "label_counts": [50, 50]}


@pytest.fixture(scope="module")
def common(load_script):
    return load_script("bench/common.py")


@pytest.fixture(scope="module")
def model(points2d):
    cfg = resolve_config(points2d, overrides=["model.hidden=16", "model.layers=2", "sample.sampler='heun'",
                                              "sample.steps=3", "sample.guidance=1.0", "objective.condition_dropout=0.1"])
    torch.manual_seed(0)
    den = points2d.build_denoiser(cfg, DATA_CONFIG).eval()
    return cfg, den, SampleSpec.from_config(cfg["sample"], den.process)


def test_timed_generation_counts_what_generate_batch_counts(common, points2d, model):
    cfg, den, spec = model
    with torch.no_grad():
        made = generate_batch(points2d, den, [0, 1, 2], cfg, DATA_CONFIG, spec)
    seconds, calls = common.timed_generation(points2d, den, [0, 1, 2, 3, 4], cfg, DATA_CONFIG, spec,
                                             torch.device("cpu"), batch=3, decode=True)
    assert seconds > 0 and calls == made.network_calls
    unguided = generate_batch(points2d, den, [0], cfg, DATA_CONFIG, dataclasses.replace(spec, guidance=0.0))
    assert calls == 2 * unguided.network_calls  # each guided evaluation is two network calls


def test_counted_calls_on_the_stand_in_equal_the_real_networks(common, points2d, model):
    cfg, den, spec = model
    with torch.no_grad():
        real = generate_batch(points2d, den, [0, 1], cfg, DATA_CONFIG, spec).network_calls
    assert common.counted_calls(points2d, den.process, [0, 1], cfg, DATA_CONFIG, spec) == real
    short = dataclasses.replace(spec, grid=spec.grid[:2])
    assert common.counted_calls(points2d, den.process, [0, 1], cfg, DATA_CONFIG, short) < real


def test_sample_overrides_take_only_sample_keys(common):
    assert common.sample_overrides(["sample.grid=log_snr"]) == ["sample.grid=log_snr"]
    with pytest.raises(SystemExit, match="model.hidden=3"):
        common.sample_overrides(["model.hidden=3"])
