"""The run folder of a training run: its config, its log and the checks that make resuming safe.

    out/config.json        the resolved config (atomic); a resume must match it except for
                           the keys and tables in RESUME_MAY_CHANGE
    out/log.jsonl          one JSON object per line (see ``core.train``)
    out/checkpoints/step-XXXXXXXX/   see core/checkpoint.py
    out/tensorboard/       scalars, when torch.utils.tensorboard imports
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import clean_checkpoints, latest_checkpoint, load_checkpoint
from .config import config_differences, json_default, lookup
from .io import InputError, atomic_write_json, atomic_write_text, remove_stale_temporaries

#: Config keys (or whole tables) that may differ between a run folder and the config that resumes
#: it: train.steps, the cadence keys, and the ``sample`` table (how the model is sampled, never how
#: it is trained).
RESUME_MAY_CHANGE = frozenset({
    "train.steps", "train.max_minutes", "train.log_every", "train.val_every", "train.val_batches", "train.sample_every",
    "train.sample_n", "train.ckpt_every", "train.keep_last", "train.num_workers", "train.max_bad_steps",
    "sample",
})


def check_folder(out: Path, cfg: dict, resume: bool, complete=None) -> Path | None:
    """Check the run folder against the config (reading only); the checkpoint to resume from, or None.
    ``complete(stored)`` fills the keys an older version did not write into the stored config."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    ckpt_path = latest_checkpoint(out) if out.is_dir() else None
    if ckpt_path is None:
        return None
    if not resume:
        raise InputError(f"{out}: this folder already holds a training run (checkpoint {ckpt_path.name}); "
                         "resume it or train into a new folder")
    stored_path = out / "config.json"
    if stored_path.is_file():
        try:
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{stored_path}: corrupt run config ({e})") from None
    else:
        stored = load_checkpoint(ckpt_path, verify=False).config
    if complete is not None:
        try:
            stored = complete(stored)
        except InputError as e:
            raise InputError(f"{stored_path}: the run's stored config no longer resolves ({e})") from None
    diffs = [k for k in config_differences(stored, cfg) if not _may_change_on_resume(k)]
    if diffs:
        shown = "; ".join(f"{k}: {lookup(stored, k)!r} in the folder, {lookup(cfg, k)!r} given" for k in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise InputError(f"{out}: cannot resume with a different configuration: {shown}{more}. Only train.steps, "
                         "the logging/checkpoint cadence and the sample section may change; train into a new folder "
                         "for anything else")
    step = step_of(ckpt_path)
    if int(cfg["train"]["steps"]) < step:
        raise InputError(f"{out}: train.steps={cfg['train']['steps']} is below the step of the latest checkpoint "
                         f"({step}); raise train.steps to continue")
    return ckpt_path


def _may_change_on_resume(key: str) -> bool:
    """Whether ``key`` or a table holding it is in RESUME_MAY_CHANGE."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in RESUME_MAY_CHANGE for i in range(1, len(parts) + 1))


def step_of(ckpt_path: Path) -> int:
    return int(ckpt_path.name.split("-", 1)[1])


def init_folder(out: Path, cfg: dict, step: int) -> None:
    """Write config.json and cut log.jsonl back to ``step`` (what a resumed run will write again)."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # half-written files of a killed run
    clean_checkpoints(out)  # and torn or temporary checkpoint folders
    atomic_write_json(out / "config.json", cfg)
    _trim_log(out / "log.jsonl", step)


def _log_lines(path: Path):
    """(line, record) for each whole JSON object line of a log.jsonl; torn lines are skipped."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield line, rec


def read_log(run: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (give the run folder or the file), skipping a line torn
    by a killed writer; [] when there is no log."""
    path = Path(run)
    path = path / "log.jsonl" if path.is_dir() else path
    return [rec for _, rec in _log_lines(path)] if path.is_file() else []


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (written after the checkpoint we resume from) and torn lines."""
    if not path.is_file():
        return
    keep = [line for line, rec in _log_lines(path) if int(rec.get("step", 0)) <= step and step > 0]
    atomic_write_text(path, "".join(x + "\n" for x in keep))


class RunLog:
    """The run's log.jsonl (appended, flushed per record) and TensorBoard scalars when available.
    Only the main process writes; elsewhere every call is a no-op."""

    def __init__(self, out: Path, main: bool):
        self.file = self.tb = None
        if not main:
            return
        self.file = open(out / "log.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            self.tb = None
        else:
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def __call__(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record, default=json_default) + "\n")
        self.file.flush()
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
