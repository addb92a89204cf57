"""docs/scaling.md's commands run as written: the shell loop of four parts and its --verify, and the
Slurm array script run with bash once per array index (its #SBATCH lines are comments to bash)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sciffusion.domains.images import ImagesDomain

DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
pytestmark = pytest.mark.skipif(ImagesDomain().default_checkpoint() is None, reason="no shipped digits model")


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)


def _env(tmp_path):
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
                SCIFFUSION_CACHE=str(tmp_path / "cache"))


def test_the_shell_loop_makes_one_complete_folder_and_verifies_it(tmp_path):
    res = subprocess.run(["bash", "-c", _blocks()[0]], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "all 64 seeds intact in 8 shards" in res.stdout
    assert len((tmp_path / "gen" / "manifest.jsonl").read_text().splitlines()) == 64


def test_the_slurm_array_script_run_per_index_matches_the_loop(tmp_path):
    script = tmp_path / "array.sh"
    script.write_text(_blocks()[1])
    env = _env(tmp_path)
    for k in (2, 0, 3):  # tasks in any order; task 1 "fails" and is rerun after the check
        res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=dict(env, SLURM_ARRAY_TASK_ID=str(k)),
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
    verify = "sciffusion sample images -n 64 --out gen --verify sample.shard_size=8"
    assert verify in DOC.read_text()
    res = subprocess.run(["bash", "-c", verify], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "16 of 64 seeds missing" in res.stderr
    subprocess.run(["bash", str(script)], cwd=tmp_path, env=dict(env, SLURM_ARRAY_TASK_ID="1"), check=True,
                   capture_output=True, timeout=600)
    res = subprocess.run(["bash", "-c", verify], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "all 64 seeds intact" in res.stdout
