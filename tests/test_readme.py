"""The README's "core in one page" example runs as written (with a tiny network and batch)."""

import re
from pathlib import Path

import torch

from sciffusion.core import State, ZeroMean

README = Path(__file__).resolve().parents[1] / "README.md"


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(4, 3)

    def forward(self, x: State, t, cond=None):
        h = torch.cat([x["pos"], t[x.index["pos"]].unsqueeze(1).to(x["pos"].dtype)], 1)
        return x.like({"pos": self.w(h)})


def test_the_core_example_of_the_readme_runs():
    block = re.search(r"## The core in one page\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    index = torch.repeat_interleave(torch.arange(3), torch.tensor([2, 4, 3]))
    batch = State({"pos": torch.randn(9, 3)}, 3, index={"pos": index}, spaces={"pos": ZeroMean()}).project()
    env = {"my_network": Tiny(), "batch": batch, "n_atoms": 9, "B": 3, "batch_vector": index, "seeds": [0, 1, 2]}
    exec(compile(block, str(README), "exec"), env)
    assert torch.isfinite(env["loss"]) and env["out"].network_calls == 20
    assert env["out"].x0["pos"].shape == (9, 3)


def test_every_picture_the_readme_shows_is_in_the_repository_and_is_a_picture():
    from PIL import Image

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert len(links) >= 6
    for link in links:
        path = README.parent / link
        assert path.is_file(), link
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) >= 200, link
