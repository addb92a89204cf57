"""A padded (dense + mask) domain of variable-length 1-D sequences, written as a plugin author
would (see docs/plugins.md), and the check that catches a network that leaks across padding."""

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from sciffusion.core.checks import check_seed_independence, seed_independence
from sciffusion.core.domain import Batch, Domain, resolve_config
from sciffusion.core.state import State


class MaskedNet(nn.Module):
    """Per-position MLP plus the masked mean of the real positions of each sequence: respects padding."""

    def __init__(self, leak: bool = False):
        super().__init__()
        self.leak = leak
        self.inp = nn.Linear(3, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x: State, t, cond):
        v, m = x["y"], x.masks["y"].unsqueeze(-1).to(x["y"].dtype)
        n = m.sum(1, keepdim=True).clamp_min(1)
        pooled = (v * m).sum(1, keepdim=True) / n
        if self.leak:  # the pitfall: a plain mean over the padded length, padding included
            pooled = v.mean(1, keepdim=True)
        h = torch.cat([v, pooled.expand_as(v), t.reshape(-1, 1, 1).expand_as(v).to(v.dtype)], dim=-1)
        return x.like({"y": self.out(torch.tanh(self.inp(h))) * m})


class Sequences(Domain):
    """Sequences of 3-8 numbers, padded to the longest of the batch (dense field + mask)."""

    name = "sequences"
    file_suffix = ".txt"

    def __init__(self, leak: bool = False):
        self.leak = leak

    def defaults(self) -> dict:
        return {"model": {"width": 16}, "sample": {"sampler": "ddpm", "steps": 6}}

    def load_dataset(self, data_cfg, split):
        rng = np.random.default_rng(0)
        return [rng.standard_normal(int(rng.integers(3, 9))) for _ in range(32)]

    def collate(self, examples, data_config) -> Batch:
        return Batch(self._padded([torch.as_tensor(e, dtype=torch.float32) for e in examples]))

    def _padded(self, seqs: list) -> State:
        L = max(len(s) for s in seqs)
        y = torch.zeros(len(seqs), L, 1)
        mask = torch.zeros(len(seqs), L, dtype=torch.bool)
        for i, s in enumerate(seqs):
            y[i, :len(s), 0], mask[i, :len(s)] = s, True
        return State.dense(y=y, masks={"y": mask})

    def build_network(self, model_cfg, data_config):
        return MaskedNet(self.leak)

    def template(self, seeds: Sequence[int], cfg, data_config) -> Batch:
        lengths = [int(np.random.default_rng(int(s)).integers(3, 9)) for s in seeds]  # from each seed alone
        return Batch(self._padded([torch.zeros(n) for n in lengths]))

    def decode(self, x0: State, cond: Any, data_config) -> list:
        return [x0["y"][i, x0.masks["y"][i], 0].tolist() for i in range(x0.batch_size)]

    def write(self, objects, seeds, folder: Path, data_config):
        raise NotImplementedError("not needed here")

    def read(self, path):
        raise NotImplementedError("not needed here")

    def metrics(self, objects, data_config, reference=None):
        return {"mean_length": float(np.mean([len(o) for o in objects]))}


@pytest.mark.parametrize("leak", [False, True])
def test_the_check_passes_a_masked_network_and_catches_one_that_reads_padding(leak):
    dom = Sequences(leak)
    cfg = resolve_config(dom)
    torch.manual_seed(0)
    den = dom.build_denoiser(cfg, {})
    seeds = [0, 1, 2, 5]
    if not leak:
        check_seed_independence(dom, den, cfg, {}, seeds)
        assert seed_independence(dom, den, cfg, {}, seeds) < 1e-12
    else:
        assert seed_independence(dom, den, cfg, {}, seeds) > 1e-4
        with pytest.raises(AssertionError, match="changes with the other examples of its batch"):
            check_seed_independence(dom, den, cfg, {}, seeds)


def test_the_padded_domain_trains_and_masks_its_loss(tmp_path):
    """The engine handles the padded field end to end: a few training steps, samples with the
    template's lengths."""
    from sciffusion.core.sampling import SampleSpec, generate_batch
    from sciffusion.core.train import load_denoiser, train

    dom = Sequences()
    cfg = resolve_config(dom, {"train": {"steps": 3, "batch_size": 8, "log_every": 1, "ckpt_every": 0}})
    res = train(dom, cfg, tmp_path / "run", device="cpu", progress=False)
    den, ckpt = load_denoiser(res.checkpoint, dom)
    out = generate_batch(dom, den, [0, 1], ckpt.config, ckpt.data_config,
                         SampleSpec.from_config(ckpt.config["sample"], den.process))
    lengths = [len(o) for o in dom.decode(out.x0, out.cond, {})]
    assert lengths == [int(np.random.default_rng(s).integers(3, 9)) for s in (0, 1)]
    assert out.network_calls == 6
