"""The audio model card writer (domains/audio/weights/ship.py): every fact it prints comes from the
checkpoints, the run's log or a measurement of the card run, it refuses a log of another run, and
the shipped card says what the shipped checkpoint is."""

import json
import platform
import re
from pathlib import Path

import pytest
import torch

import sciffusion
from sciffusion.core.checkpoint import load_checkpoint
from sciffusion.core.io import InputError
from sciffusion.core.registry import get_domain
from sciffusion.domains.audio.data import fsdd_root

SHIP_PY = Path(sciffusion.__file__).resolve().parent / "domains" / "audio" / "weights" / "ship.py"
FSDD = pytest.mark.skipif(fsdd_root() is None, reason="FSDD not found (../shared/data/fsdd/recordings or "
                                                      "$SCIFFUSION_FSDD): the card measures on it")


@pytest.fixture(scope="module")
def ship(load_script):
    return load_script("domains/audio/weights/ship.py")


@pytest.fixture(scope="module")
def mel_ckpt():
    return load_checkpoint(get_domain("audio").default_checkpoint())


def test_training_facts_come_from_the_checkpoint(ship, mel_ckpt):
    text = ship.history_text(mel_ckpt, None, None)
    meta = mel_ckpt.meta
    assert text.startswith(f"Step {mel_ckpt.step:,} ({meta['train']['examples_seen']:,} examples")
    assert "v-prediction MSE" in text and f"{meta['metrics']['loss']:.3f}" in text and "No training log" in text
    recipe = ship.recipe_text(ship.resolved(mel_ckpt))
    assert "objective: v-prediction" in recipe and "Process: vp_cosine (log_snr_min -15.0)" in recipe
    assert "channels 96" in recipe and "lr 0.0003" in recipe
    mel = ship.mel_text(mel_ckpt.data_config)
    assert "hop 64, 64 htk bands over 0-4000 Hz" in mel and "126 frames per clip" in mel
    n = sum(v.numel() for v in mel_ckpt.weights().values())
    assert ship.weights_text(mel_ckpt) == f"EMA of step 4,000 (safetensors, {n:,} parameters), hash `{mel_ckpt.hash[:16]}`"


def test_the_log_gives_sessions_devices_and_the_loss_curve(ship, mel_ckpt, tmp_path):
    log = [{"step": 0, "event": "start", "world_size": 1, "device": "cpu"},
           {"step": 2000, "loss": 0.5, "lr": 1e-3, "elapsed": 600.0},
           {"step": 2000, "event": "resume", "world_size": 2, "device": "cuda:0"},
           {"step": 4000, "loss": 0.2, "lr": 1e-4, "elapsed": 1200.0},
           {"step": 4050, "loss": 0.1, "lr": 1e-4, "elapsed": 1300.0}]  # after the exported step
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    with pytest.raises(InputError, match="no readable config.json"):
        ship.training_records(run / "log.jsonl", mel_ckpt)
    (run / "config.json").write_text(json.dumps(dict(mel_ckpt.config, model=dict(mel_ckpt.config["model"], channels=8))))
    with pytest.raises(InputError, match="not the checkpoint's"):
        ship.training_records(run / "log.jsonl", mel_ckpt)
    (run / "config.json").write_text(json.dumps(mel_ckpt.config))
    records = ship.training_records(run / "log.jsonl", mel_ckpt)
    assert records[-1]["step"] == 4000
    text = ship.history_text(mel_ckpt, records, run / "log.jsonl")
    assert "steps 0 to 2,000 in one process on cpu (10 min); steps 2,000 to 4,000 in 2 processes under torchrun on cuda:0 (20 min)" in text
    assert "Training loss: step 2,000: 0.500, step 4,000: 0.200." in text
    with pytest.raises(InputError, match="no training record at the checkpoint's step 4000"):
        (run / "log.jsonl").write_text(json.dumps(log[1]) + "\n")
        ship.training_records(run / "log.jsonl", mel_ckpt)
    with pytest.raises(InputError, match="no training log there"):
        ship.training_records(tmp_path / "nowhere", mel_ckpt)


def test_data_split_and_license_are_read_not_written_in(ship, tmp_path, monkeypatch):
    assert ship.split_text({"label_pattern": r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"}) == \
        "files whose `take` is 0, 1, 2, 3, 4 form the test split"
    assert ship.split_text({"label_pattern": "", "split_every": 5}) == "every 5-th file (sorted by name) is a test file"
    files = [{"file": f"/x/{d}_{who}_0.wav"} for d in range(3) for who in ("ann", "bob")]
    assert ship.speakers(files, r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$") == ["ann", "bob"]
    assert ship.speakers(files, r"^(?P<label>\d)_") == []
    import sciffusion.domains.audio.data as data

    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    monkeypatch.setattr(data, "fsdd_root", lambda: rec)
    with pytest.raises(SystemExit, match="must credit it"):
        ship.fsdd_readme()
    (rec.parent / "README.md").write_text("# data\n- Source: somewhere, commit 1.\n- License: CC0. Credit: us.\n")
    assert ship.fsdd_readme() == {"file": rec.parent / "README.md", "source": "somewhere, commit 1.",
                                  "license": "CC0. Credit: us."}
    (rec.parent / "README.md").write_text("# data\n")
    with pytest.raises(SystemExit, match="no '- License:' line"):
        ship.fsdd_readme()


def test_rows_and_verdicts_are_formatted_from_the_numbers(ship):
    row = ship.metric_row("x", {"n": 4, "fid": 1.234, "is": 9.0, "mis": 10.0, "am": 0.1, "ndb_k": 0.5, "accuracy": 0.904})
    assert row == "| x | 4 | 1.23 | 9.00 | 10.0 | 0.100 | 0.50 | 90.4 | - |"
    gl = {"sc": 0.1, "lsd": 5.0, "mcd": 4.0}
    cfg = {"sample": {"vocoder": "griffin_lim"}}
    assert "worse than Griffin-Lim on SC, MCD" in ship.vocoder_verdict([gl, {"sc": 0.9, "lsd": 4.0, "mcd": 9.0}], cfg)
    assert "at least as good as Griffin-Lim" in ship.vocoder_verdict([gl, dict(gl)], cfg)
    assert "`sample.vocoder = griffin_lim`" in ship.vocoder_verdict([gl, dict(gl)], cfg)


def test_the_shipped_card_describes_the_shipped_checkpoint(mel_ckpt):
    card = (mel_ckpt.path / "MODEL_CARD.md").read_text()
    assert "eps loss" not in card and "objective: v-prediction" in card
    n = sum(v.numel() for v in mel_ckpt.weights().values())
    assert f"EMA of step {mel_ckpt.step:,} (safetensors, {n:,} parameters), hash `{mel_ckpt.hash[:16]}`" in card
    assert "hop 64, 64 htk bands" in card and "CC BY-SA 4.0" in card and "Free Spoken Digit Dataset" in card
    s = mel_ckpt.config["sample"]
    assert f"Default: {s['sampler']} on the {s['grid']} grid, {s['steps']} steps, classifier-free guidance {s['guidance']}" in card
    assert re.search(r"\d+ network calls a clip", card) and "## Measured on" in card


@FSDD
def test_card_end_to_end_from_the_checkpoints_and_measurements(ship, mel_ckpt, tmp_path):
    out = tmp_path / "MODEL_CARD.md"
    before = (mel_ckpt.path / "MODEL_CARD.md").read_text()
    ship.main(["card", "--samples", "2", "--vocoder-clips", "1", "--out", str(out)])
    card = out.read_text()
    assert (mel_ckpt.path / "MODEL_CARD.md").read_text() == before  # --out is where the card goes
    assert "(2 clips per model row" in card and "| shipped model, guidance 1.5 (default) | 2 |" in card
    run_calls = 2 * mel_ckpt.config["sample"]["steps"]  # dpmpp_2m with guidance: two calls a step
    assert f"{run_calls} network calls a clip" in card
    clf_acc = re.search(r"its accuracy\non the test split, measured here: ([\d.]+)%", card)
    assert clf_acc and float(clf_acc.group(1)) > 90
    assert "| ddpm | log_snr | 6 |" in card and "`sample.vocoder=shipped`" in card
    assert platform.platform() in card and f"torch {torch.__version__}" in card
