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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trained_to(run: Path, step: int) -> None:
    import json

    ck = run / "checkpoints" / f"step-{step:08d}" / "checkpoint.json"
    assert ck.is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    assert json.loads(ck.read_text())["train"]["world_size"] == 2


def test_the_torchrun_block_trains_on_two_simulated_nodes(tmp_path):
    block = _blocks()[2]
    assert block.startswith("torchrun --nnodes=2")
    env = dict(_env(tmp_path), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    nodes = [subprocess.Popen(["bash", "-c", block], cwd=tmp_path, env=dict(env, NODE_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in nodes:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert "trained images to step 20" in out
    _trained_to(tmp_path / "runs" / "digits-2nodes", 20)


_SRUN = """#!/bin/bash
# stand-in for Slurm's srun: the command once per node of the allocation, SLURM_NODEID set
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""

_SCONTROL = """#!/bin/bash
# stand-in for Slurm's scontrol: "show hostnames LIST" names the allocation's nodes, here one machine
[ "$1 $2" = "show hostnames" ] && printf '127.0.0.1\\n127.0.0.2\\n'
"""


def test_the_slurm_training_script_runs_one_torchrun_per_node_and_a_requeue_leaves_it_done(tmp_path):
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    for name, text in (("srun", _SRUN), ("scontrol", _SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "train.sh"
    script.write_text(_blocks()[3])
    env = _env(tmp_path)
    env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_NNODES="2", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node[1-2]", MASTER_PORT=str(_free_port()))
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "digits-slurm"
    _trained_to(run, 20)
    log = (run / "log.jsonl").read_text()
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=dict(env, MASTER_PORT=str(_free_port())),
                         capture_output=True, text=True, timeout=600)  # the requeued job: nothing left to do
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained images to step 20") == 2
    assert (run / "log.jsonl").read_text() == log
