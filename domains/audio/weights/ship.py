"""Export trained FSDD runs as the shipped audio models and write their model card from measurements.

    sciffusion export runs/fsdd_mel --out domains/audio/weights/fsdd --replace sample.guidance=1.5
    sciffusion export runs/fsdd_vocoder --out domains/audio/weights/fsdd_vocoder --replace
    OMP_NUM_THREADS=1 python domains/audio/weights/ship.py card --samples 1000 \
        --log runs/fsdd_mel/log.jsonl --vocoder-log runs/fsdd_vocoder/log.jsonl

Every fact of MODEL_CARD.md comes from one of three places: the checkpoints (config, data config,
step, weights, the trainer's last record), the training runs' logs when given (``--log``,
``--vocoder-log``: sessions, devices, loss curves), or what the card run measures (the FSDD files
and the README beside them, the generated clips' metrics, timing and network calls, the
classifier's accuracy on the test split, the vocoder's copy-synthesis scores, the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from sciffusion.core.provenance import (
    CardError,
    loss_curve,
    measured_on,
    print_card,
    processes,
    save_card,
    training_history,
    training_records,
)

HERE = Path(__file__).resolve().parent
MEL = HERE / "fsdd"
VOCODER = HERE / "fsdd_vocoder"
BENCH = HERE.parents[2] / "bench"

#: the quality table's columns: (header, metric key, format of the value)
METRICS = [("n", "n", "{:.0f}"), ("FID", "fid", "{:.2f}"), ("IS", "is", "{:.2f}"), ("mIS", "mis", "{:.1f}"),
           ("AM", "am", "{:.3f}"), ("NDB/K", "ndb_k", "{:.2f}"), ("accuracy %", "accuracy", "{:.1%}"),
           ("FID-class", "fid_class", "{:.2f}")]


# ----------------------------------------------------------------------------- the data


def shown(path: Path) -> str:
    """A path as the card names it: relative to the repository root."""
    return os.path.relpath(Path(path).resolve(), HERE.parents[2])


def fsdd_readme() -> dict:
    """The source and license lines of the README beside the FSDD recordings this run reads."""
    from sciffusion.domains.audio.data import fsdd_root

    root = fsdd_root()
    readme = root.parent / "README.md" if root is not None else None
    if readme is None or not readme.is_file():
        raise CardError("the FSDD recordings or the README beside them were not found (../shared/data/fsdd or "
                        "$SCIFFUSION_FSDD): the card measures on FSDD and must credit it")
    lines = {m.group(1).lower(): m.group(2).strip() for m in re.finditer(r"^- (Source|License): (.+)$",
                                                                          readme.read_text(), re.M)}
    if "license" not in lines:
        raise CardError(f"{readme}: no '- License:' line to credit the dataset with")
    return {"file": readme, "source": lines.get("source", "not stated"), "license": lines["license"]}


def split_text(data_cfg: dict) -> str:
    """The train/test rule the checkpoint's data table selects (``data.split_rule``)."""
    from sciffusion.domains.audio.data import EveryKSplit, split_rule

    rule = split_rule(data_cfg, data_cfg.get("label_pattern") or None)
    if isinstance(rule, EveryKSplit):
        return f"every {rule.k}-th file (sorted by name) is a test file"
    values = sorted(rule.test_values, key=lambda v: (len(v), v))
    return f"files whose `{rule.group}` is {', '.join(values)} form the test split"


def speakers(examples: list[dict], pattern: str) -> list[str]:
    """The distinct ``speaker`` groups of the examples' file names (none when the pattern has no such group)."""
    found = set()
    for e in examples:
        m = re.match(pattern, Path(e["file"]).name) if pattern else None
        if m is not None and m.groupdict().get("speaker"):
            found.add(m.group("speaker"))
    return sorted(found)


def data_section(ckpt, readme: dict, test: list[dict], train_clips: int) -> str:
    cfg, dc = ckpt.config["data"], ckpt.data_config
    who = speakers(test, cfg.get("label_pattern", ""))
    by = f" by {len(who)} speakers ({', '.join(who)})" if who else ""
    where = f"`{cfg['path']}`" if cfg.get("path") else "FSDD, read in place"
    return f"""{where}: labels {', '.join(dc['label_names'])}; {train_clips:,} training clips (the checkpoint's label counts)
and {len(test):,} test clips{by}, as this run found them; {split_text(cfg)}.
Clips at {dc['sample_rate']:,} Hz, centre-cropped or zero-padded to {dc['seconds']:g} s ({dc['samples']:,} samples).
FSDD's README (`{shown(readme['file'])}`): source: {readme['source']}
License: {readme['license']}
These weights are derived from the FSDD recordings and are shared under the license named there, with that credit."""


def mel_text(dc: dict) -> str:
    m = dc["mel"]
    return (f"log-mel at {m['sample_rate']:,} Hz: n_fft {m['n_fft']}, window {m['win_length']}, hop {m['hop_length']}, "
            f"{m['n_mels']} {m['mel_scale']} bands over {m['f_min']:g}-{m['f_max']:g} Hz, power {m['power']:g}, "
            f"normalised from [{m['db_min']:g}, {m['db_max']:g}] dB to [-1, 1]; {dc['frames']} frames per clip")


# ----------------------------------------------------------------------------- training


def history_text(ckpt, records: list[dict] | None, log: Path | None) -> str:
    """The trainer's record in the checkpoint, and the log's sessions and losses when given."""
    meta, pred = ckpt.meta, ckpt.config["objective"]["prediction"]
    train, last = meta.get("train", {}), meta.get("metrics", {})
    seen, n = train.get("examples_seen"), train.get("train_examples")
    epochs = f" = {seen / n:.1f} epochs of {n:,} clips" if seen and n else ""
    text = (f"Step {ckpt.step:,} ({seen or 0:,} examples{epochs}) in {processes(train.get('world_size', 1))}; "
            f"{last.get('elapsed', 0) / 60:.0f} min of training by the trainer's clock; last logged loss "
            f"({pred}-prediction MSE) {last.get('loss', float('nan')):.3f}.")
    if records is None:
        return text + " No training log was given (`--log`): the devices and the loss curve are not known here."
    return (text + f"\nFrom the run's log (`{log}`): {training_history(records)}"
            f"\nTraining loss: {loss_curve(records)}.")


def pairs(table: dict, skip: str = "") -> str:
    return ", ".join(f"{k} {v}" for k, v in table.items() if k != skip)


def recipe_text(cfg: dict) -> str:
    """The checkpoint's network, process, objective and optimisation settings."""
    m, o, t = cfg["model"], cfg["objective"], cfg["train"]
    return (f"Network: {m['network']}, {pairs(m, 'network')}.\n"
            f"Process: {cfg['process']['name']} ({pairs(cfg['process'], 'name') or 'its defaults'}); "
            f"objective: {o['prediction']}-prediction, weighting {o['weighting']}, time sampler {o['time_sampler']}, "
            f"condition dropout {o['condition_dropout']}.\n"
            f"Optimisation: batch {t['batch_size']}, AdamW lr {t['lr']}, {t['warmup_steps']} warm-up steps, "
            f"{t['decay']} decay to {t['min_lr_ratio']} x lr, EMA {t['ema_decay']}, grad_clip {t['grad_clip']}.")


def resolved(ckpt) -> dict:
    """The checkpoint's config with every default filled in (what sampling and the recipe use)."""
    from sciffusion.core.domain import resolve_config
    from sciffusion.core.registry import get_domain

    return resolve_config(get_domain(ckpt.domain), base=ckpt.config, base_name=str(ckpt.path / "checkpoint.json"))


def weights_text(ckpt) -> str:
    ema = ckpt.meta.get("exported_from", {}).get("used_ema") or ckpt.has("ema.safetensors")
    n = sum(v.numel() for v in ckpt.weights().values())
    which = "EMA" if ema else "raw (non-EMA) weights"
    return f"{which} of step {ckpt.step:,} (safetensors, {n:,} parameters), hash `{ckpt.hash[:16]}`"


# ----------------------------------------------------------------------------- sampling and quality


def generate(model: Path, n: int, guidance: float, out: Path) -> dict:
    """Sample ``n`` clips of the mel model into ``out``; its run.json (timing, device, calls)."""
    from sciffusion import api

    api.sample(str(model), out, n=n, guidance=guidance, progress=False, overrides=["sample.spectrograms=false"])
    return json.loads((out / "run.json").read_text())


def metric_row(name: str, m: dict) -> str:
    cells = [fmt.format(m[key]).rstrip("%") if key in m else "-" for _, key, fmt in METRICS]
    return "| " + " | ".join([name, *cells]) + " |"


def quality_rows(model: Path, samples: int, guidances: list[float], default: float,
                 tmp: Path) -> tuple[list[str], list[str]]:
    """(table rows, timing lines) for the mel model at each guidance weight."""
    from sciffusion import api

    rows, timing = [], []
    for g in guidances:
        run = generate(model, samples, g, tmp / f"g{g:g}")
        m = api.evaluate("audio", [tmp / f"g{g:g}"], checkpoint=model)
        rows.append(metric_row(f"shipped model, guidance {g:g}" + (" (default)" if g == default else ""), m))
        timing.append(f"- guidance {g:g}: {run['files']:,} clips in {run['seconds']:.0f} s with WAV writing "
                      f"({run['samples_per_s']:.1f} clips/s) on {run['device']}, {run['network_calls_per_sample']} "
                      f"network calls a clip")
        print(rows[-1], flush=True)
    return rows, timing


def sampling_text(cfg: dict) -> str:
    s = cfg["sample"]
    label = "drawn per seed from the training label counts" if s["label"] == -1 else f"`sample.label = {s['label']}`"
    return (f"Default: {s['sampler']} on the {s['grid']} grid, {s['steps']} steps, classifier-free guidance "
            f"{s['guidance']}, then `sample.vocoder = {s['vocoder']}`"
            + (f" ({s['griffin_lim_iters']} iterations)" if s["vocoder"] == "griffin_lim" else "")
            + f"; the label is {label} unless `sample.label` is set.")


# ----------------------------------------------------------------------------- the vocoder


def vocoder_verdict(rows: list[dict], mel_cfg: dict) -> str:
    """What the copy-synthesis table says of the vocoder's default schedule against Griffin-Lim."""
    gl, default = rows[0], rows[1]
    worse = [k.upper() for k in ("sc", "lsd", "mcd") if default[k] > gl[k]]
    verdict = (f"worse than Griffin-Lim on {', '.join(worse)}" if worse
               else "at least as good as Griffin-Lim on SC, LSD and MCD")
    return (f"At its default schedule the vocoder scores {verdict}; the mel model's default waveform path is "
            f"`sample.vocoder = {mel_cfg['sample']['vocoder']}`.")


def shipped_as(path: Path) -> str:
    from sciffusion.domains.audio.vocoder import VocoderDomain

    shipped = VocoderDomain().default_checkpoint()
    return ", `sample.vocoder=shipped`" if shipped is not None and shipped.resolve() == Path(path).resolve() else ""


def vocoder_section(model: Path, log: Path | None, mel_cfg: dict, clips: int) -> str:
    """The vocoder: its checkpoint, training, and copy-synthesis scores measured here."""
    from sciffusion.core.checkpoint import load_checkpoint

    sys.path.insert(0, str(BENCH))
    from common import table
    from vocoder import COPY_COLUMNS, copy_cells, copy_synthesis

    ckpt = load_checkpoint(model)
    cfg = resolved(ckpt)
    s = cfg["sample"]
    records = training_records(log, ckpt) if log else None
    schedules = [f"{s['sampler']}:{s['grid']}:{s['steps']}", f"{s['sampler']}:{s['grid']}:{2 * s['steps']}"]
    _, rows = copy_synthesis(str(model), clips, schedules, 32)
    return f"""## Neural vocoder (`{shown(ckpt.path)}`{shipped_as(ckpt.path)})
Mel-conditioned waveform diffusion, {weights_text(ckpt)}.
{recipe_text(cfg)}
Default sampling: {s['sampler']} on the {s['grid']} grid, {s['steps']} steps.
{history_text(ckpt, records, log)}

Copy-synthesis of {clips} FSDD test clips from their mels, against Griffin-Lim (scores over each clip's
audio before its zero padding, lower is better; pad rms = output level in the padding; RTF = seconds of
compute per second of audio on this machine):

{table(COPY_COLUMNS, [copy_cells(r) for r in rows])}

{vocoder_verdict(rows, mel_cfg)}
"""


# ----------------------------------------------------------------------------- the card


def card(args) -> str:
    """Measure the models and write the card (``--out``, default the mel model's MODEL_CARD.md); its text."""
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.core.registry import get_domain
    from sciffusion.domains.audio.data import load_examples

    domain = get_domain("audio")
    model = Path(args.model)
    ckpt = load_checkpoint(model)
    cfg, dc = resolved(ckpt), ckpt.data_config
    readme = fsdd_readme()
    records = training_records(Path(args.log), ckpt) if args.log else None
    default = float(cfg["sample"]["guidance"])
    with tempfile.TemporaryDirectory() as tmp:
        rows, timing = quality_rows(model, args.samples, args.guidance or [default], default, Path(tmp))
    anchors = domain.reference_metrics(int(cfg["sample"]["griffin_lim_iters"]))
    rows += [metric_row("FSDD test split itself", anchors["test"]),
             metric_row(f"test split through mel + Griffin-Lim ({cfg['sample']['griffin_lim_iters']} it.)",
                        anchors["griffin_lim"])]
    vocoder = vocoder_section(Path(args.vocoder), Path(args.vocoder_log) if args.vocoder_log else None, cfg,
                              args.vocoder_clips) if args.vocoder else ""
    shipped = domain.default_checkpoint()
    is_default = shipped is not None and shipped.resolve() == ckpt.path.resolve()
    role = ("The default model of `sciffusion sample audio`" if is_default
            else f"A model of the `audio` domain (not its default: that is {shipped})")
    conditional = "class-conditional" if dc["label_names"] else "unconditional"
    text = f"""# Shipped model: `audio` / {dc['source']} ({conditional} mel diffusion, {cfg['model']['network']})

{role}. Weights: {weights_text(ckpt)}.

## Data
{data_section(ckpt, readme, load_examples(cfg['data'], 'test'), sum(dc['label_counts']))}

## Training
{recipe_text(cfg)}
Mel settings (frozen in the checkpoint): {mel_text(dc)}.
{history_text(ckpt, records, Path(args.log) if args.log else None)}

## Sampling
{sampling_text(cfg)}

## Quality ({args.samples:,} clips per model row; DiffWave's protocol against FSDD's training split)
Classifier: the FSDD digit CNN (`AudioDomain.classifier`), trained on the training split; its accuracy
on the test split, measured here: {anchors['test']['accuracy']:.1%}. Accuracy of a model row: the classifier's
agreement with the label asked for.

| clips | {' | '.join(h for h, _, _ in METRICS)} |
|{'---|' * (len(METRICS) + 1)}
""" + "\n".join(rows) + f"""

Generation on this machine:
{chr(10).join(timing)}

{vocoder}
{measured_on("domains/audio/weights/ship.py", args.argv)}"""
    return save_card(text, args.out, model)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("card", help="measure the models and write the mel model's MODEL_CARD.md")
    c.add_argument("--model", default=str(MEL), help="the mel checkpoint (default: the shipped weights/fsdd)")
    c.add_argument("--vocoder", default=str(VOCODER) if (VOCODER / "checkpoint.json").is_file() else "",
                   help="the vocoder checkpoint of the card's vocoder section (\"\": none)")
    c.add_argument("--out", default=None, help="where the card goes (default: MODEL_CARD.md in the mel checkpoint)")
    c.add_argument("--samples", type=int, default=1000, help="clips per guidance row")
    c.add_argument("--guidance", type=float, nargs="+", default=None, help="default: the model's own")
    c.add_argument("--log", default=None, help="the mel run's log.jsonl (its folder holds config.json)")
    c.add_argument("--vocoder-log", default=None, help="the vocoder run's log.jsonl")
    c.add_argument("--vocoder-clips", type=int, default=50, help="FSDD test clips of the copy-synthesis table")
    args = ap.parse_args(argv)
    args.argv = argv
    print_card(card, args)


if __name__ == "__main__":
    main()
