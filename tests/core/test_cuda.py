"""On a CUDA device: the same noise, the same samples (to float tolerance) and a working trainer
under bf16 autocast. Skipped where there is no GPU (CI); bench/gpu.sh runs these on one."""

import numpy as np
import pytest
import torch

from sciffusion.core.noise import ExampleNoise
from sciffusion.core.process import VPCosine
from sciffusion.core.sampling import SampleSpec, sample_batch
from sciffusion.core.targets import ExactDenoiser, GaussianMixture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by bench/gpu.sh)")


def test_example_noise_is_the_same_on_the_gpu():
    ring = GaussianMixture.ring()
    like = ring.state(torch.zeros(64, 2, dtype=torch.float64))
    cpu = ExampleNoise(range(64)).normal(like)["x"]
    gpu = ExampleNoise(range(64), device="cuda").normal(like.to("cuda"))["x"]
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "heun"])
def test_sampling_on_the_gpu_matches_the_cpu(sampler):
    ring, proc = GaussianMixture.ring(), VPCosine()
    spec = SampleSpec.from_config({"sampler": sampler, "steps": 12, "grid": "karras"}, proc)
    like = ring.state(torch.zeros(256, 2, dtype=torch.float64))
    cpu = sample_batch(ExactDenoiser(ring, proc), like, None, ExampleNoise(range(256)), spec).x0["x"]
    gpu = sample_batch(ExactDenoiser(ring, proc), like.to("cuda"), None, ExampleNoise(range(256), device="cuda"),
                       spec).x0["x"]
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


def test_the_molecules_recipe_trains_under_bf16_on_the_gpu_and_loads_on_the_cpu(tmp_path, monkeypatch):
    from sciffusion.core.domain import resolve_config
    from sciffusion.core.registry import get_domain
    from sciffusion.core.train import load_denoiser, train
    from sciffusion.domains.molecules.types import Molecule

    dom = get_domain("molecules")
    rng = np.random.default_rng(0)
    mols = [Molecule(rng.choice([1, 6, 8], size=8), rng.standard_normal((8, 3))) for _ in range(32)]
    monkeypatch.setattr(type(dom), "load_dataset", lambda self, data_cfg, split: mols)
    cfg = resolve_config(dom, overrides=["model.hidden=32", "model.layers=2", "process.name=rectified_flow",
                                         "objective.prediction=x0", "objective.self_conditioning=0.5",
                                         "data.atom_types=categorical", "data.align=ot", "train.steps=5",
                                         "train.batch_size=16", "train.bf16=true", "train.log_every=1",
                                         "train.ckpt_every=0", "sample.sampler=euler", "sample.grid=uniform"])
    res = train(dom, cfg, tmp_path / "run", device="cuda", progress=False)
    assert np.isfinite(res.metrics["loss"]) and res.metrics["bad_steps"] == 0
    den, _ = load_denoiser(res.checkpoint, dom, device="cpu")
    assert next(den.parameters()).device.type == "cpu"
