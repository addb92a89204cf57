import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The suite works on small tensors, where intra-op threads only add contention (on a loaded 2-core
# machine, 10x slower). One thread also makes timings of tests steady.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "tests" / "plugins" / "points2d"


@pytest.fixture(scope="session")
def points2d_env(tmp_path_factory):
    """Install the third-party test plugin (sciffusion-points2d) as a separate distribution into a
    private folder, make it importable here, and return an environment for subprocesses (the CLI)
    that sees it. Nothing is installed into the project's environment."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-compile", "--target", str(target), str(PLUGIN_SRC)],
        check=True, capture_output=True, text=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    yield env
    sys.path.remove(str(target))


@pytest.fixture(scope="session")
def points2d(points2d_env):
    """The plugin's Domain instance, found through the entry-point registry."""
    from sciffusion.core.registry import get_domain

    return get_domain("points2d")


@pytest.fixture(scope="session")
def points_data(points2d, tmp_path_factory):
    """A folder of 300 labelled point clouds written by the plugin's own data maker."""
    import sciffusion_points2d

    return sciffusion_points2d.make_dataset(tmp_path_factory.mktemp("points-data"), 300, seed=0)


@pytest.fixture(scope="session")
def load_script():
    """Import a script of the repository (a bench or a ship.py, not part of the package) by its
    path relative to the root; its folder is on sys.path while it loads (scripts import siblings)."""
    import importlib.util

    def load(relative: str):
        path = ROOT / relative
        spec = importlib.util.spec_from_file_location(path.stem + "_script_" + path.parent.name, path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        return module

    return load


ARTIFACTS = Path(os.environ.get("SCIFFUSION_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="session")
def browser(load_script):
    """A headless Chromium driven over the DevTools protocol (tests/browser.py), shared by the
    session's tests; they skip with the reason when no Chromium is installed."""
    mod = load_script("tests/browser.py")
    if mod.find_chromium() is None:
        pytest.skip("Chromium not found: apt-get install chromium (Debian), or set SCIFFUSION_CHROMIUM")
    with mod.Browser() as b:
        yield b


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests keep what a person may want to look at afterwards (screenshots), by default
    test-artifacts/ in the repository ($SCIFFUSION_TEST_ARTIFACTS)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
