"""Where a model and its numbers come from: the machine a run is on, and a training run's history
read from its log. Model cards and benchmark headers are written from these (never from text
that states facts by hand)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from .io import InputError


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """This machine as a run finds it: host, OS, CPU, cores, Python, torch and CUDA."""
    import torch

    if torch.cuda.is_available():
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"CUDA {torch.version.cuda}: {gpus}"
    else:
        cuda = "no CUDA device" + (f" (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else "")
    return (f"{platform.node()}, {platform.platform()}, {cpu_model()}, {os.cpu_count()} cores; "
            f"Python {platform.python_version()}, torch {torch.__version__}, {cuda}")


def training_records(log: Path, ckpt) -> list[dict]:
    """The log records of the run that made ``ckpt``, up to its step. The run folder's config.json
    must describe the same model and data, and the log must reach the checkpoint's step."""
    from .run_folder import read_log

    log = Path(log)
    records = read_log(log)
    if not records:
        raise InputError(f"{log}: no training log there")
    folder = log.parent if log.is_file() else log
    try:
        run_cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: no readable config.json beside the log ({e})") from None
    if run_cfg.get("model") != ckpt.config.get("model") or run_cfg.get("data") != ckpt.config.get("data"):
        raise InputError(f"{folder}: the run's model or data config is not the checkpoint's")
    if not any(r.get("step") == ckpt.step and "loss" in r for r in records):
        raise InputError(f"{log}: the log has no training record at the checkpoint's step {ckpt.step}")
    return [r for r in records if int(r.get("step", 0)) <= ckpt.step]


def sessions(records: list[dict]) -> tuple[list[dict], list[tuple[int, float, float]]]:
    """Training sessions of a log (from, to, processes "world", device, training seconds "s"),
    consecutive ones on the same setup merged, and the warm restarts of the learning rate
    (step, lr before, lr after: train.steps raised on a resume restarts a decaying schedule)."""
    segments, restarts, last_lr = [], [], None
    for rec in records:
        if rec.get("event") in ("start", "resume"):
            segments.append({"from": rec["step"], "to": rec["step"], "world": rec.get("world_size", 1),
                             "device": rec.get("device", "an unrecorded device"), "s": 0.0, "sessions": 1})
        elif "loss" in rec and segments:
            seg = segments[-1]
            if seg["to"] == seg["from"] and last_lr is not None and rec["lr"] > 2 * last_lr:
                restarts.append((seg["from"], last_lr, rec["lr"]))
            seg["to"], seg["s"], last_lr = rec["step"], rec.get("elapsed") or seg["s"], rec["lr"]
    merged: list[dict] = []
    for seg in (g for g in segments if g["to"] > g["from"]):  # sessions killed before a log line left no steps
        last = merged[-1] if merged else None
        if last and (last["world"], last["device"], last["to"]) == (seg["world"], seg["device"], seg["from"]):
            last.update(to=seg["to"], s=last["s"] + seg["s"], sessions=last["sessions"] + 1)
        else:
            merged.append(dict(seg))
    return merged, restarts


def processes(world: int) -> str:
    return "one process" if world == 1 else f"{world} processes under torchrun"


def training_history(records: list[dict]) -> str:
    """The run's sessions in words: steps, processes, device and time of each, and warm restarts."""
    merged, restarts = sessions(records)
    text = "; ".join(f"steps {g['from']:,} to {g['to']:,} in {processes(g['world'])} on {g['device']} "
                     f"({g['s'] / 60:.0f} min{_resumed(g['sessions'])})" for g in merged)
    for step, before, after in restarts:
        text += (f". At step {step:,} the run was resumed with train.steps raised, which restarted the "
                 f"schedule (learning rate {before:.1e} -> {after:.1e}, a warm restart)")
    return text + "." if text else "the log records no training steps."


def _resumed(sessions: int) -> str:
    return "" if sessions == 1 else f", {sessions} sessions: stopped and resumed {sessions - 1} time{'s' * (sessions > 2)}"


def loss_curve(records: list[dict], points: int = 7) -> str:
    """About ``points`` (step, training loss) pairs of the log, the last one included."""
    losses = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    if not losses:
        return "not in the log"
    picked = losses[::max(1, len(losses) // (points - 1))]
    if picked[-1] != losses[-1]:
        picked.append(losses[-1])
    return ", ".join(f"step {s:,}: {v:.3f}" for s, v in picked)


def config_overrides(domain, cfg: dict) -> list[str]:
    """The keys of ``cfg`` that differ from the domain's defaults, as dotted command-line overrides
    (``sciffusion train DOMAIN`` with them resolves to ``cfg``)."""
    from .config import flatten, parse_value

    base = flatten(domain.default_config())
    out = []
    for key, value in flatten({k: v for k, v in cfg.items() if isinstance(v, dict)}).items():
        if key in base and base[key] == value:
            continue
        bare = isinstance(value, str) and parse_value(value) == value
        out.append(f"{key}={value if bare else json.dumps(value)}")
    return out


class CardError(SystemExit):
    """A source of a model card that is missing or does not describe the checkpoint (exit code 1)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def print_card(write, args) -> None:
    """Print the card ``write(args)`` measures and writes; an ``InputError`` on the way (a source
    that does not describe the checkpoint) becomes a ``CardError``."""
    try:
        print(write(args))
    except InputError as e:
        raise CardError(str(e)) from None


def measured_on(script: str, argv) -> str:
    """A card's last section: when, on which machine and by which command it was measured."""
    import datetime as dt
    import shlex

    return (f"## Measured on\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()};\n"
            f"`python {script} {shlex.join(argv)}`.\n")


def save_card(text: str, out: str | None, model: Path) -> str:
    """Write a card (atomically) to ``out``, else to MODEL_CARD.md in the model's folder; the text."""
    from .io import atomic_write_text

    atomic_write_text(Path(out) if out else Path(model) / "MODEL_CARD.md", text)
    return text


def card_arguments(doc: str, model: Path, what: str):
    """A card script's parser, its sub-commands and the ``card`` sub-command with ``--model`` (default
    ``model``) and ``--out``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("card", help=f"measure {what} and write its MODEL_CARD.md")
    c.add_argument("--model", default=str(model), help=f"the checkpoint folder (default: {model.name})")
    c.add_argument("--out", default=None, help="where to write the card (default: MODEL_CARD.md in the model folder)")
    return ap, sub, c
