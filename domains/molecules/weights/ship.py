"""Export a trained run as the shipped QM9 model and write its model card from measurements.

    sciffusion export runs/qm9_small --out domains/molecules/weights/qm9 --replace sample.sampler=ddpm \
        sample.grid=discrete sample.steps=50                                  # EMA weights, sampler defaults
    python domains/molecules/weights/ship.py card --samples 10000 --log runs/qm9_small/log.jsonl
    python domains/molecules/weights/ship.py card --samples 10000 --from runs/qm9_card_10k \
        --log runs/qm9_small/log.jsonl --sweep ddpm:25 ddpm:100 dpmpp_2m:50:log_snr --sweep-samples 500

Every fact of the card comes from one of four places: the checkpoint (config, data facts, step,
hashes, weights), the training run's log (``--log``: sessions, processes, devices, time, losses),
the samples folder's run.json and manifest (made by this run, or a finished folder of this
checkpoint given with ``--from``, e.g. one generated under torchrun), or what this run measures
(the metrics of those samples and of the held-out split, the optional sampler sweep, the machine).
Network calls are the ones the sampling path counted (50 DDPM steps on EDM's schedule are 51 calls).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from sciffusion.core.provenance import (CardError, card_arguments, config_overrides, loss_curve, measured_on,
                                        print_card, processes, save_card, training_history, training_records)

HERE = Path(__file__).resolve().parent
TARGET = HERE / "qm9"

#: the card's metric rows: (label, key of the domain's metrics)
METRICS = [("atom stability", "atom_stability"), ("molecule stability", "molecule_stability"),
           ("validity (EDM, largest fragment)", "validity"), ("validity (strict, one fragment)", "validity_strict"),
           ("uniqueness", "uniqueness"), ("V x U", "valid_and_unique"), ("novelty", "novelty"),
           ("validity (xyz2mol route)", "validity_xyz2mol")]


# ----------------------------------------------------------------------------- samples


def read_samples(folder: Path, ckpt) -> tuple[dict, list[dict]]:
    """run.json and the manifest rows of a finished samples folder of ``ckpt``."""
    try:
        run = json.loads((folder / "run.json").read_text())
        rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError) as e:
        raise CardError(f"{folder}: not a finished samples folder ({e})") from None
    if run.get("status") != "complete" or run.get("files") != len(rows) or not rows:
        raise CardError(f"{folder}: the generation run is not complete")
    if run.get("checkpoint_hash") != ckpt.hash or any(r["checkpoint_hash"] != ckpt.hash for r in rows):
        raise CardError(f"{folder}: the samples were not made with the checkpoint {ckpt.path} ({ckpt.hash[:16]})")
    return run, rows


def sampling_of(rows: list[dict]) -> dict:
    """The one sampling setting of a manifest (sampler, grid, steps, guidance, network calls per sample)."""
    keys = ("sampler", "grid", "steps", "guidance", "network_calls")
    settings = {tuple(r.get(k) for k in keys) for r in rows}
    if len(settings) != 1:
        raise CardError(f"the manifest mixes {len(settings)} sampling settings; the card describes one")
    return dict(zip(keys, settings.pop()))


def check_default(setting: dict, ckpt) -> None:
    """The card's quality section measures the model's own sampling defaults."""
    s = ckpt.config["sample"]
    want = {k: s.get(k, 0.0 if k == "guidance" else None) for k in ("sampler", "grid", "steps", "guidance")}
    got = {k: setting[k] for k in want}
    if got != want:
        raise CardError(f"the samples were made with {got}, not with the model's defaults {want}")


def make_samples(model: Path, out: Path, n: int, **sample) -> Path:
    """``n`` samples of ``model`` into ``out`` through ``sciffusion.api.sample`` (its run.json and
    manifest record how they were made)."""
    from sciffusion import api

    return api.sample(str(model), out, n=n, progress=False, **sample).out


def score(folder: Path, model: Path) -> dict:
    """The metrics ``sciffusion evaluate molecules FOLDER --checkpoint MODEL`` reports."""
    from sciffusion import api

    return api.evaluate("molecules", [folder], checkpoint=model)


def score_held_out(ckpt, n: int) -> tuple[dict, int]:
    """The same metrics on the first ``n`` molecules of the held-out (test) split of the checkpoint's
    data: what the real data scores under these definitions."""
    from sciffusion.core.registry import get_domain

    dom = get_domain("molecules")
    mols = list(dom.load_dataset(ckpt.config["data"], "test"))[:n]
    if not mols:
        raise CardError("the checkpoint's data has no test molecules to compare with")
    return dom.metrics(mols, ckpt.data_config), len(mols)


def parse_sweep(cells: list[str]) -> list[dict]:
    """``sampler:steps[:grid]`` cells as ``api.sample`` keyword arguments."""
    out = []
    for cell in cells:
        parts = cell.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise CardError(f"sweep cell {cell!r}: write sampler:steps or sampler:steps:grid (ddpm:100)")
        out.append({"sampler": parts[0], "steps": int(parts[1]), **({"grid": parts[2]} if len(parts) == 3 else {})})
    return out


def sweep(model: Path, ckpt, cells: list[dict], n: int, tmp: Path) -> list[list[str]]:
    """One measured row per cell: the setting as the manifest records it, the counted network calls
    and the metrics of ``n`` fresh samples."""
    rows = []
    for i, cell in enumerate(cells):
        folder = make_samples(model, tmp / f"sweep{i}", n, **cell)
        _, manifest = read_samples(folder, ckpt)
        s, m = sampling_of(manifest), score(folder, model)
        rows.append([s["sampler"], s["grid"], str(s["steps"]), str(s["network_calls"]), f"{len(manifest):,}",
                     *(f"{m[k]:.1f}" for k in ("atom_stability", "molecule_stability", "validity", "valid_and_unique"))])
        print("  " + " | ".join(rows[-1]), flush=True)
    return rows


def _checkpoint(model: Path):
    from sciffusion.core.checkpoint import load_checkpoint

    return load_checkpoint(model)


def data_section(ckpt) -> str:
    cfg, dc = ckpt.config["data"], ckpt.data_config
    n_train = ckpt.meta.get("train", {}).get("train_examples", sum(dc.get("size_counts", [])))
    where = f"the user's files `{cfg['path']}`" if cfg.get("path") else f"`data.source = {dc.get('source')}`"
    text = (f"{where}, training split of {n_train:,} molecules (the atom-count prior p(N) holds "
            f"{sum(dc['size_counts']):,}), elements {' '.join(dc['elements'])}, up to {dc['max_atoms']} atoms.")
    if dc.get("source") == "qm9" and not cfg.get("path"):
        from sciffusion.domains.molecules.data import QM9_CITATION, QM9_PACKAGE, qm9_package_version

        text += (f" QM9 is read from the PyPI package `{QM9_PACKAGE}` ({qm9_package_version() or 'not installed'} "
                 f"where this card was made); QM9: {QM9_CITATION}.")
    return text


def training_section(ckpt, records: list[dict] | None, log: Path | None) -> str:
    from sciffusion.core.registry import get_domain

    cfg, meta = ckpt.config, ckpt.meta
    m, t, p, o = cfg["model"], cfg["train"], cfg["process"], cfg["objective"]
    seen, n_train = meta.get("train", {}).get("examples_seen"), meta.get("train", {}).get("train_examples")
    epochs = f" = {seen / n_train:.1f} epochs ({seen:,} examples)" if seen and n_train else ""
    history = (f"From the run's log (`{log}`): {training_history(records)}\nTraining loss: {loss_curve(records)}."
               if records is not None else "No training log was given (`--log`): sessions and losses are not known here.")
    command = shlex.join(["sciffusion", "train", "molecules", *config_overrides(get_domain("molecules"), cfg)])
    return f"""{history}
Network: {m.get('network')} {', '.join(f'{k} {v}' for k, v in m.items() if k != 'network')}.
Process: {', '.join(f'{k} {v}' for k, v in p.items())}; objective: {', '.join(f'{k} {v}' for k, v in o.items())}.
Optimisation: batch {t.get('batch_size')}, AdamW lr {t.get('lr')}, {t.get('warmup_steps')} warm-up steps, lr decay {t.get('decay')},
EMA {t.get('ema_decay')}, adaptive gradient clipping {'on' if t.get('adaptive_clip') else 'off'}, grad_clip {t.get('grad_clip')};
step {ckpt.step:,}{epochs}.
The checkpoint's config, as a command (defaults of today's `molecules` domain left out):
`{command}`"""


def quality_section(run: dict, rows: list[dict], setting: dict, ours: dict, held: dict, n_held: int, made: str) -> str:
    n = len(rows)
    table = "\n".join(f"| {label} | {ours[k]:.2f} | {held[k]:.2f} |" for label, k in METRICS if k in ours and k in held)
    timing = (f"{run['files']:,} molecules in {run['seconds']:,.0f} s including SDF writing ({run['samples_per_s']:.1f} / s), "
              f"{processes(run.get('world_size', 1))} on {run.get('device')}, torch {run.get('torch')}; "
              f"{run.get('network_calls_per_sample', setting['network_calls'])} network calls a molecule.")
    return f"""## Quality ({n:,} samples, {setting['sampler']} on the {setting['grid']} grid, {setting['steps']} steps = {setting['network_calls']} network calls)
Sampled from the checkpoint's `{run.get('weights')}.safetensors`; atom counts drawn from the training histogram; guidance {setting['guidance']}; the metrics of
`sciffusion evaluate molecules` (EDM's definitions, `docs/molecules.md`). The last column scores the first
{n_held:,} real molecules of the held-out split with the same code.

| metric | % (this model) | % (held-out data) |
|---|---|---|
{table}

Generation ({made}, finished {run.get('finished_utc')}): {timing}"""


def sweep_section(rows: list[list[str]]) -> str:
    head = "| sampler | grid | steps | network calls | samples | atom stab. % | mol. stab. % | valid % | V x U % |"
    return "\n## Sampler and step count (measured by this card run)\n\n" + "\n".join(
        [head, "|" + "---|" * 9] + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_card(args) -> str:
    """Measure and write the card; returns its text."""

    model = Path(args.model)
    ckpt = _checkpoint(model)
    records = training_records(Path(args.log), ckpt) if args.log else None
    cells = parse_sweep(args.sweep or [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.source) if args.source else make_samples(model, Path(tmp) / "out", args.samples)
        run, rows = read_samples(folder, ckpt)
        setting = sampling_of(rows)
        check_default(setting, ckpt)
        ours = score(folder, model)
        held, n_held = score_held_out(ckpt, args.data_samples or len(rows))
        sweep_rows = sweep(model, ckpt, cells, args.sweep_samples, Path(tmp)) if cells else []
    made = f"generated beforehand into `{folder.name}`" if args.source else "generated by this card run"
    n_params = sum(v.numel() for v in ckpt.weights().values())
    data = "user data" if ckpt.config["data"].get("path") else ckpt.data_config.get("source")
    text = f"""# Shipped model: `{ckpt.domain}` / {data} ({ckpt.config['model'].get('network')})

The default model of `sciffusion sample {ckpt.domain}`. Weights: {_weights(ckpt)} of step {ckpt.step} (safetensors,
{n_params:,} parameters), hash `{ckpt.hash[:16]}`{_exported(ckpt)}.

## Data
{data_section(ckpt)}

## Training
{training_section(ckpt, records, Path(args.log) if args.log else None)}

{quality_section(run, rows, setting, ours, held, n_held, made)}
{sweep_section(sweep_rows) if sweep_rows else ''}
{measured_on("domains/molecules/weights/ship.py", args.argv)}"""
    return save_card(text, args.out, model)


def _weights(ckpt) -> str:
    """Which weights the checkpoint holds (an export says whether it took the EMA)."""
    if ckpt.meta.get("exported_from", {}).get("used_ema") or ckpt.has("ema.safetensors"):
        return "EMA"
    return "raw (non-EMA) weights"


def _exported(ckpt) -> str:
    src = ckpt.meta.get("exported_from", {}).get("hash")
    return f", exported from the training checkpoint `{src[:16]}`" if src else ""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap, _, c = card_arguments(__doc__, TARGET, "the QM9 model")
    c.add_argument("--samples", type=int, default=10000, help="samples of the quality section (model's own sampler)")
    c.add_argument("--from", dest="source", default=None,
                   help="score this finished samples folder of the model (made with its defaults) instead of sampling")
    c.add_argument("--log", default=None, help="the training run's log.jsonl (or run folder) for the training history")
    c.add_argument("--data-samples", type=int, default=None,
                   help="held-out molecules scored for comparison (default: as many as --samples)")
    c.add_argument("--sweep", nargs="+", default=None, metavar="SAMPLER:STEPS[:GRID]",
                   help="also measure these sampling settings (ddpm:100 dpmpp_2m:50:log_snr)")
    c.add_argument("--sweep-samples", type=int, default=500, help="samples per sweep cell")
    args = ap.parse_args(argv)
    args.argv = argv
    print_card(write_card, args)


if __name__ == "__main__":
    main()
