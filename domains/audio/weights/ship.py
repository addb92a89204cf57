"""Export trained FSDD runs as the shipped audio models and measure them for the model card.

    sciffusion export runs/fsdd_mel --out domains/audio/weights/fsdd --replace sample.guidance=1.5
    sciffusion export runs/fsdd_vocoder --out domains/audio/weights/fsdd_vocoder --replace
    python domains/audio/weights/ship.py card --samples 1000        # measure, write MODEL_CARD.md

Every number in MODEL_CARD.md comes from the `card` run that wrote it (machine recorded there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEL = HERE / "fsdd"
VOCODER = HERE / "fsdd_vocoder"


def _losses(log: str | None) -> str:
    from sciffusion.core.train import read_log

    rows = [(r["step"], r["loss"], r.get("elapsed")) for r in (read_log(log) if log else []) if "loss" in r]
    if not rows:
        return "(log not available)"
    pick = rows[:: max(1, len(rows) // 6)] + rows[-1:]
    text = ", ".join(f"step {s}: {v:.3f}" for s, v, _ in pick)
    if rows and rows[-1][2]:
        text += f" ({rows[-1][2] / 3600:.1f} h of training)"
    return text


def _metric_row(name: str, m: dict) -> str:
    acc = f"{100 * m['accuracy']:.1f}" if "accuracy" in m else "-"
    fc = f"{m['fid_class']:.2f}" if "fid_class" in m else "-"
    return f"| {name} | {int(m['n'])} | {m['fid']:.2f} | {m['is']:.2f} | {m['mis']:.1f} | {m['am']:.3f} | {m['ndb_k']:.2f} | {acc} | {fc} |"


def card(samples: int, guidances: list[float], log: str | None, vocoder_log: str | None) -> None:
    from sciffusion import api
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.core.registry import get_domain

    domain = get_domain("audio")
    ckpt = load_checkpoint(MEL)
    cfg = ckpt.config
    s = cfg["sample"]
    n_params = sum(v.numel() for v in ckpt.weights().values())
    rows, timing = [], ""
    for g in guidances:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = api.sample("audio", Path(tmp) / "out", n=samples, guidance=g, progress=False,
                             overrides=["sample.spectrograms=false"])
            sec = time.perf_counter() - t0
            m = api.evaluate("audio", [res.out])
        rows.append(_metric_row(f"shipped model, guidance {g:g}" + (" (default)" if g == float(s.get("guidance", 0)) else ""), m))
        timing += f"- guidance {g:g}: {samples} clips in {sec:.0f} s with WAV writing ({samples / sec:.1f} clips/s)\n"
        print(rows[-1], flush=True)
    anchors = domain.reference_metrics()
    rows += [_metric_row("FSDD test split itself", anchors["test"]),
             _metric_row("test split through mel + Griffin-Lim (32 it.)", anchors["griffin_lim"])]
    train, model = cfg["train"], cfg["model"]
    vocoder = ""
    if (VOCODER / "checkpoint.json").is_file():
        vocoder = _vocoder_section(vocoder_log, 50)
    text = f"""# Shipped model: `audio` / FSDD spoken digits (class-conditional mel diffusion, CPU-trained)

The default model of `sciffusion sample audio` (`sample.label=7` says a seven). Weights: EMA of step
{ckpt.step} (safetensors, {n_params:,} parameters), hash `{ckpt.hash[:16]}`.

## Data
The Free Spoken Digit Dataset (FSDD), Zohar Jackson and contributors, licensed CC BY-SA 4.0
(https://github.com/Jakobovski/free-spoken-digit-dataset): 2,500 recordings of the digits 0-9 by
5 speakers at 8 kHz. Training split: takes 5-49 of every speaker and digit (2,250 clips); test
split: takes 0-4 (250 clips). Clips centre-cropped or zero-padded to 1 s. These weights are derived
from FSDD and are shared under the same license (CC BY-SA 4.0), crediting FSDD as above.

## Training
`sciffusion train audio --config domains/audio/configs/fsdd_small.toml` on one CPU core of a 2-core
VM (no GPU was lent): 1-D mel U-Net (mel bands as channels) width {model['channels']}, levels
{model['mults']}, {model['res_blocks']} residual blocks per level; the frozen mel settings of
`docs/audio.md` (64 bands, hop 64, 126 frames per clip); VP cosine process, eps loss, condition
dropout {cfg['objective'].get('condition_dropout')} (classifier-free guidance); batch {train['batch_size']}, AdamW lr {train['lr']}, {train['warmup_steps']}
warm-up steps, {train['decay']} decay, EMA {train['ema_decay']}; {ckpt.step} steps
= {ckpt.step * train['batch_size'] / 2250:.0f} epochs.
Training loss (v-prediction, as logged): {_losses(log)}.

## Sampling
Default: {s['sampler']} on the {s.get('grid', 'karras')} grid, {s['steps']} steps, classifier-free guidance {s.get('guidance', 0)}
(each step evaluates the network twice when guidance > 0), then Griffin-Lim ({s.get('griffin_lim_iters', 32)} iterations)
to 8 kHz WAV. The digit is drawn per seed from the training label counts unless `sample.label` is set.

## Quality ({samples} clips per row; DiffWave's protocol against FSDD's training split)
Classifier: the FSDD digit CNN trained here on the training split (99.2 % test accuracy), see
`docs/audio.md`. Accuracy: the classifier's agreement with the digit asked for.

| clips | n | FID | IS | mIS | AM | NDB/K | accuracy % | FID-class |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Generation on this machine:
{timing}
{vocoder}
## Measured on
{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPU cores, no GPU;
`python domains/audio/weights/ship.py {' '.join(sys.argv[1:])}`.
"""
    (MEL / "MODEL_CARD.md").write_text(text)
    print(text)


def _vocoder_section(log: str | None, clips: int) -> str:
    """Copy-synthesis quality of the shipped vocoder against Griffin-Lim (bench/vocoder.py's table)."""
    from sciffusion.core.checkpoint import load_checkpoint

    sys.path.insert(0, str(HERE.parents[2] / "bench"))
    from vocoder import quality

    ckpt = load_checkpoint(VOCODER)
    s, m = ckpt.config["sample"], ckpt.config["model"]
    n_params = sum(v.numel() for v in ckpt.weights().values())
    schedules = [f"{s['sampler']}:{s['grid']}:{s['steps']}", f"{s['sampler']}:{s['grid']}:12"]
    return f"""## Neural vocoder (`weights/fsdd_vocoder`, `sample.vocoder=shipped`)
DiffWave-style mel-conditioned waveform diffusion (`docs/audio.md`, Vocoder) trained on the same FSDD
training split with `domains/audio/configs/vocoder_small.toml` on one CPU core: {m['residual_channels']} residual
channels, {m['layers']} layers ({n_params:,} parameters), EMA of step {ckpt.step}; default sampler
{s['sampler']}, {s['steps']} steps on the {s['grid']} grid. Training loss (eps MSE): {_losses(log)}.
Copy-synthesis of FSDD test clips from their mels (lower is better), against Griffin-Lim:

{quality(str(VOCODER), clips, schedules, 32).replace(str(VOCODER), 'domains/audio/weights/fsdd_vocoder')}

Trained this briefly it stays far behind Griffin-Lim, which therefore remains the default
(`sample.vocoder=griffin_lim`).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("card")
    c.add_argument("--samples", type=int, default=1000)
    c.add_argument("--guidance", type=float, nargs="+", default=None, help="default: the model's own")
    c.add_argument("--log", default="runs/fsdd_mel/log.jsonl")
    c.add_argument("--vocoder-log", default="runs/fsdd_vocoder/log.jsonl")
    args = ap.parse_args()
    from sciffusion.core.checkpoint import load_checkpoint

    g = args.guidance or [float(load_checkpoint(MEL).config["sample"].get("guidance", 0))]
    card(args.samples, g, args.log, args.vocoder_log)


if __name__ == "__main__":
    main()
