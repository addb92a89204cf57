"""Export a trained run as the shipped QM9 model and measure it for the model card.

    sciffusion export runs/qm9_small --out domains/molecules/weights/qm9 --replace sample.sampler=ddpm \
        sample.grid=discrete sample.steps=50                                  # EMA weights, sampler defaults
    python domains/molecules/weights/ship.py card --samples 2000 --nfe 50   # measure, write MODEL_CARD.md

Every number in MODEL_CARD.md comes from the `card` run that wrote it (machine recorded there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "qm9"


def _check_source(folder: Path, ckpt, samples: int) -> Path:
    """A finished samples folder of this checkpoint with the model's default sampling and ``samples`` seeds."""
    run = json.loads((folder / "run.json").read_text())
    rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    s = ckpt.config["sample"]
    if run.get("checkpoint_hash") != ckpt.hash or len(rows) != samples or any(
            (r["sampler"], r["steps"], r["grid"]) != (s["sampler"], s["steps"], s["grid"]) for r in rows):
        sys.exit(f"{folder}: not {samples} finished samples of the shipped model with its default sampler")
    return folder


def training_history(records: list[dict]) -> str:
    """The run's sessions from its log: steps, processes and time of each, and any warm restart of
    the learning-rate schedule (train.steps raised on a resume)."""
    segments, restarts, last_lr = [], [], None
    for rec in records:
        if "event" in rec and rec["event"] in ("start", "resume"):
            segments.append({"from": rec["step"], "to": rec["step"], "world": rec.get("world_size", 1), "s": 0.0})
        elif "loss" in rec and segments:
            seg = segments[-1]
            if seg["to"] == seg["from"] and last_lr is not None and rec["lr"] > 2 * last_lr:
                restarts.append((seg["from"], last_lr, rec["lr"]))
            seg["to"], seg["s"], last_lr = rec["step"], rec.get("elapsed") or seg["s"], rec["lr"]
    merged = []
    for seg in (g for g in segments if g["to"] > g["from"]):  # sessions killed before their first checkpoint left no steps
        if merged and merged[-1]["world"] == seg["world"] and merged[-1]["to"] == seg["from"]:
            merged[-1].update(to=seg["to"], s=merged[-1]["s"] + seg["s"])
        else:
            merged.append(dict(seg))

    def processes(world: int) -> str:
        return "one process" if world == 1 else f"{world} processes under torchrun"

    parts = [f"steps {g['from']:,} to {g['to']:,} in {processes(g['world'])} ({g['s'] / 60:.0f} min)" for g in merged]
    text = "; ".join(parts)
    for step, before, after in restarts:
        text += (f". At step {step:,} the run was resumed with train.steps raised, which restarted the cosine "
                 f"schedule (learning rate {before:.1e} -> {after:.1e}, a warm restart)")
    return text + "." if text else "(log not available)."


def _source_timing(folder: Path) -> str:
    run = json.loads((folder / "run.json").read_text())
    return (f"Generated beforehand into `{folder.name}` ({run.get('world_size', 1)} CPU processes under torchrun): "
            f"{run['files']:,} molecules in {run['seconds']:,.0f} s including SDF writing ({run['samples_per_s']:.1f} / s).")


def card(samples: int, nfe: int | None, sampler: str | None, grid: str | None, log: str | None, sweep: str | None,
         source: str | None = None) -> None:
    from sciffusion import api
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.domains.molecules.metrics import qm9_reference_smiles

    ckpt = load_checkpoint(TARGET)
    cfg = ckpt.config
    sampler = sampler or cfg["sample"]["sampler"]
    grid = grid or cfg["sample"]["grid"]
    nfe = nfe or cfg["sample"]["steps"]
    from sciffusion.core.registry import get_domain

    dom = get_domain("molecules")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if source:  # samples made beforehand (e.g. under torchrun) with the shipped model's defaults
            out, seconds = _check_source(Path(source), ckpt, samples), None
        else:
            out = api.sample("molecules", Path(tmp) / "out", n=samples, sampler=sampler, steps=nfe, grid=grid,
                             progress=False).out
            seconds = time.perf_counter() - t0
        mols = [m for f in sorted(out.glob("*.sdf")) for m in dom.read(f)]
        from sciffusion.domains.molecules.metrics import evaluate_molecules

        m = evaluate_molecules(mols, train_smiles=qm9_reference_smiles())
    from sciffusion.core.train import read_log

    records = read_log(log) if log else []
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    train = cfg["train"]
    model = cfg["model"]
    n_params = sum(v.numel() for v in ckpt.weights().values())
    rows = [
        ("atom stability", m["atom_stability"]), ("molecule stability", m["molecule_stability"]),
        ("validity (EDM, largest fragment)", m["validity"]), ("validity (strict, one fragment)", m["validity_strict"]),
        ("uniqueness", m["uniqueness"]), ("V x U", m["valid_and_unique"]), ("novelty", m["novelty"]),
        ("validity (xyz2mol route)", m["validity_xyz2mol"]),
    ]
    text = f"""# Shipped model: `molecules` / QM9 (small EGNN, CPU-trained)

The default model of `sciffusion sample molecules`. Weights: EMA of step {ckpt.step} (safetensors,
{n_params:,} parameters), hash `{ckpt.hash[:16]}`.

## Data
QM9 (130,831 molecules, explicit hydrogens, elements H C N O F) from the PyPI package `qm9pack`
1.0.3, EDM's training split (100,000 molecules). QM9: Ramakrishnan, Dral, Rupp, von Lilienfeld,
"Quantum chemistry structures and properties of 134 kilo molecules", Scientific Data 1, 140022 (2014).

## Training
`sciffusion train molecules --config domains/molecules/configs/qm9_small.toml` on the CPU of a
2-core VM (no GPU was available), one thread a process: {training_history(records)}
EGNN hidden {model.get('hidden')}, {model.get('layers')} layers;
EDM's polynomial_2 process (1000 steps) and eps loss; batch {train['batch_size']}, AdamW lr {train['lr']}
with {train['warmup_steps']} warm-up steps and {train['decay']} decay, EMA {train['ema_decay']},
adaptive gradient clipping; {train['steps']} steps = {train['steps'] * train['batch_size'] / 100000:.1f} epochs.
Training loss (eps MSE): {', '.join(f'step {s}: {v:.3f}' for s, v in losses[:: max(1, len(losses) // 6)])}.
This is a small, briefly trained model: EDM's reference network (5.3 M parameters) trained for
about 1,100 epochs on a GPU. It is far from the published numbers below.

## Quality ({samples:,} samples, {sampler} on the {grid} grid, {nfe} steps = {2 * nfe - 1 if sampler == "heun" else nfe} network evaluations)
Atom counts drawn from the training histogram; EDM's metric definitions (`docs/molecules.md`);
novelty against the training split's SMILES.

| metric | % |
|---|---|
""" + "\n".join(f"| {k} | {v:.2f} |" for k, v in rows if v is not None) + """

For comparison (10,000 samples, from the papers): EDM (1000 NFE) atom 98.7, molecule 82.0,
valid 91.9, V x U 90.7; the data itself 99.0 / 95.2 / 97.7.

""" + (f"Generation: {samples:,} molecules in {seconds:.0f} s including SDF writing ({samples / seconds:.1f} / s)."
       if seconds else _source_timing(Path(source))) + """
""" + (f"\n## Sampler and step count\n\n{Path(sweep).read_text()}\n" if sweep and Path(sweep).is_file() else "") + f"""
## Measured on
{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPU cores, no GPU;
`python domains/molecules/weights/ship.py {' '.join(sys.argv[1:])}`.
"""
    (TARGET / "MODEL_CARD.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("card")
    c.add_argument("--samples", type=int, default=2000)
    c.add_argument("--nfe", type=int, default=None, help="default: the model's own")
    c.add_argument("--sampler", default=None)
    c.add_argument("--grid", default=None)
    c.add_argument("--log", default="runs/qm9_small/log.jsonl")
    c.add_argument("--sweep", default=None, help="a markdown file with the sampler sweep table to include")
    c.add_argument("--from", dest="source", default=None, help="score this finished samples folder instead of sampling")
    args = ap.parse_args()
    card(args.samples, args.nfe, args.sampler, args.grid, args.log, args.sweep, args.source)


if __name__ == "__main__":
    main()
