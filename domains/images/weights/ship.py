"""Export a trained run as the shipped digits model and write its model card from measurements.

    sciffusion export runs/digits --out domains/images/weights/digits --replace
    python domains/images/weights/ship.py card --samples 2000 --log runs/digits/log.jsonl
    sciffusion export runs/hubble_sr --out domains/images/weights/hubble_sr --replace
    python domains/images/weights/ship.py sr-card --samples 200 --log runs/hubble_sr/log.jsonl

Every fact of the card comes from the checkpoint (config, data facts, step, hashes, weights), the
training run's log (``--log``: sessions, processes, time, losses), the samples folders' run.json and
manifests made by this card run through ``sciffusion.api.sample``, or what this run measures with
``sciffusion.api.evaluate`` (the samples, the held-out digits scored by the same code, the call
sweep, inpainting of held-out digits) and the machine. Network calls are the ones the sampling path
counted.
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
TARGET = HERE / "digits"
SR_TARGET = HERE / "hubble_sr"
KEYS = [("FID", "fid", ".2f"), ("precision", "precision", ".3f"), ("recall", "recall", ".3f"),
        ("Inception Score", "is", ".2f"), ("accuracy of the asked label", "accuracy", ".3f")]


def generate(model: Path, out: Path, n: int, overrides: list[str] = ()) -> tuple[dict, dict]:
    """``n`` samples through the API, then their run.json and the metrics of ``sciffusion evaluate``."""
    from sciffusion import api

    api.sample(str(model), out, n=n, overrides=list(overrides), progress=False)
    run = json.loads((out / "run.json").read_text())
    if run.get("status") != "complete":
        raise CardError(f"{out}: the generation run is not complete")
    return run, api.evaluate("images", [out], checkpoint=model)


def write_held_out(ckpt, folder: Path) -> int:
    """The held-out split of the checkpoint's data as 8-bit PNGs (named by index, labels in metadata)."""
    from sciffusion.domains.images.dataset import load_examples
    from sciffusion.domains.images.output import write_png

    test = load_examples(ckpt.config["data"], "test")
    if not test:
        raise CardError("the checkpoint's data has no held-out split to compare with")
    folder.mkdir(parents=True, exist_ok=True)
    for i, e in enumerate(test):
        write_png(folder / f"{i:05d}.png", e["image"], 8, {"label": e.get("label")})
    return len(test)


def row(name: str, m: dict) -> str:
    return f"| {name} | " + " | ".join(format(m[k], f) if k in m else "-" for _, k, f in KEYS) + " |"


def quality_section(model: Path, ckpt, n: int, tmp: Path) -> str:
    from sciffusion import api

    run, ours = generate(model, tmp / "default", n)
    n_held = write_held_out(ckpt, tmp / "held")
    held = api.evaluate("images", [tmp / "held"], checkpoint=model)
    first = tmp / "first"  # the model's first n_held samples: FID grows as the sample count falls
    first.mkdir()
    for f in sorted((tmp / "default").glob("0*.png"))[:n_held]:
        (first / f.name).write_bytes(f.read_bytes())
    ours_few = api.evaluate("images", [first], checkpoint=model)
    s = ckpt.config["sample"]
    head = "| set | " + " | ".join(label for label, _, _ in KEYS) + " |\n|---|" + "---|" * len(KEYS)
    return f"""## Quality ({n:,} samples: {s['sampler']} on the {s['grid']} grid, {s['steps']} steps = {run['network_calls_per_sample']} network calls, guidance {s['guidance']})
Labels drawn per seed from the training counts; the metrics of `sciffusion evaluate images --checkpoint`
(features of a digits classifier trained here on the training split, reference = the training split;
docs/images.md). The last row scores the {n_held} real held-out digits with the same code; FID grows as the
sample count falls, so compare it with the model's first {n_held} samples.

{head}
{row(f'this model ({n:,} samples)', ours)}
{row(f'this model (its first {n_held} samples)', ours_few)}
{row(f'held-out digits ({n_held})', held)}

Generation: {run['files']:,} images in {run['seconds']:.1f} s including PNG writing ({run['samples_per_s']:.0f} / s),
{processes(run.get('world_size', 1))} on {run.get('device')}, torch {run.get('torch')}."""


def sweep_section(model: Path, n: int, calls: list[int], guidances: list[float], tmp: Path) -> str:
    lines = ["| sampler | steps | network calls | guidance | FID | precision | recall | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for g in guidances:
        for c in calls:
            steps = c if g == 0 else c // 2  # a guided evaluation is two calls
            run, m = generate(model, tmp / f"c{c}g{g}", n, [f"sample.steps={steps}", f"sample.guidance={g}"])
            lines.append(f"| {run['config']['sample']['sampler']} | {steps} | {run['network_calls_per_sample']} | {g} | "
                         f"{m['fid']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | {m.get('accuracy', float('nan')):.3f} |")
            print("  " + lines[-1], flush=True)
    return f"\n## Network calls and guidance (measured by this card run, {n:,} samples a row)\n\n" + "\n".join(lines) + "\n"


def inpaint_section(model: Path, ckpt, n: int, tmp: Path) -> str:
    """Inpainting of held-out digits (the centre 4 x 4 regenerated, label unknown): PSNR / SSIM
    against the originals, beside the same images with the hole filled with grey."""
    from sciffusion import api
    from sciffusion.domains.images.data import read_image
    from sciffusion.domains.images.metrics import psnr, ssim

    import torch

    held = sorted((tmp / "held").glob("*.png"))[:n]
    folder = tmp / "inpaint-in"
    folder.mkdir()
    for f in held:
        (folder / f.name).write_bytes(f.read_bytes())
    out = tmp / "inpaint"
    api.sample(str(model), out, seeds=f"0-{len(held) - 1}", progress=False,
               overrides=[f"sample.inpaint={folder}", "sample.mask_box=[2, 2, 4, 4]"])
    m = api.evaluate("images", [out], checkpoint=model)
    ref = torch.stack([torch.from_numpy(read_image(f)["image"]) for f in held]) * 2 - 1
    grey = ref.clone()
    grey[:, :, 2:6, 2:6] = 0.0
    return (f"\n## Inpainting ({len(held)} held-out digits, centre 4 x 4 regenerated, "
            f"{ckpt.config['sample']['sampler']} replacement, label unknown)\n\n"
            f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f} against the originals (whole image; the known pixels are "
            f"kept exactly); the hole filled with mid-grey scores PSNR {psnr(ref, grey):.2f} dB, SSIM {ssim(ref, grey):.3f}.\n")


def training_section(ckpt, records, log: Path | None) -> str:
    from sciffusion.core.registry import get_domain

    cfg = ckpt.config
    m, t, p, o = cfg["model"], cfg["train"], cfg["process"], cfg["objective"]
    history = (f"From the run's log (`{log}`): {training_history(records)}\nTraining loss: {loss_curve(records)}."
               if records is not None else "No training log was given (`--log`): sessions and losses are not known here.")
    command = shlex.join(["sciffusion", "train", "images", *config_overrides(get_domain("images"), cfg)])
    dropout = (f", condition dropout {o['condition_dropout']}" if ckpt.data_config.get("label_names")
               else " (unconditional: no labels)")
    return f"""{history}
Network: {m['network']}, channels {m['channels']}, mults {m['mults']}, res_blocks {m['res_blocks']}, attention at sides <= {m['attention_res']}, heads {m['heads']}.
Process: {', '.join(f'{k} {v}' for k, v in p.items())}; objective: prediction {o['prediction']}{dropout}.
Optimisation: batch {t['batch_size']}, AdamW lr {t['lr']}, {t['warmup_steps']} warm-up steps, decay {t['decay']} to {t['min_lr_ratio']} x lr, EMA {t['ema_decay']}, grad_clip {t['grad_clip']}; step {ckpt.step:,}.
The checkpoint's config, as a command (defaults of today's `images` domain left out): `{command}`"""


def write_card(args) -> str:
    from sciffusion.core.checkpoint import load_checkpoint

    model = Path(args.model)
    ckpt = load_checkpoint(model)
    records = training_records(Path(args.log), ckpt) if args.log else None
    dc = ckpt.data_config
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        quality = quality_section(model, ckpt, args.samples, tmp)
        sweep = sweep_section(model, args.sweep_samples, args.calls, args.guidance, tmp)
        inpaint = inpaint_section(model, ckpt, args.inpaint_samples, tmp)
    n_params = sum(v.numel() for v in ckpt.weights().values())
    text = f"""# Shipped model: `images` / scikit-learn digits ({ckpt.config['model']['network']})

The default model of `sciffusion sample images`. Weights: EMA of step {ckpt.step:,} (safetensors, {n_params:,}
parameters), hash `{ckpt.hash[:16]}`.

## Data
scikit-learn's bundled 8 x 8 digits (`sklearn.datasets.load_digits`, 1,797 images, values 0..16 read as 0..1):
{dc['examples']:,} training images (every 10th held out), {len(dc['label_names'])} classes {', '.join(dc['label_names'])}, class-conditional
with classifier-free guidance (null label dropout {ckpt.config['objective']['condition_dropout']}).

## Training
{training_section(ckpt, records, Path(args.log) if args.log else None)}

{quality}
{sweep}{inpaint}
{measured_on("domains/images/weights/ship.py", args.argv)}"""
    return save_card(text, args.out, model)


def write_sr_card(args) -> str:
    """The card of the super-resolution model: its data, training and PSNR / SSIM per call budget."""
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.domains.images.dataset import describe
    from sciffusion.domains.images.scoring import super_resolution_scores

    model = Path(args.model)
    ckpt = load_checkpoint(model)
    records = training_records(Path(args.log), ckpt) if args.log else None
    dc, data = ckpt.data_config, ckpt.config["data"]
    with tempfile.TemporaryDirectory() as tmp:
        rows, n = super_resolution_scores(model, args.samples, args.calls, Path(tmp))
    table = "\n".join(f"| {r['method']} | {r['calls']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                      f"{'-' if r['images_per_s'] is None else format(r['images_per_s'], '.0f')} |" for r in rows)
    n_params = sum(v.numel() for v in ckpt.weights().values())
    text = f"""# Shipped model: `images` / x{dc['sr_factor']} super-resolution of {data['builtin']} patches ({ckpt.config['model']['network']})

SR3-style super-resolution (the low-resolution image, upsampled bicubically, concatenated to the network's
input). Weights: EMA of step {ckpt.step:,} (safetensors, {n_params:,} parameters), hash `{ckpt.hash[:16]}`.
Use: `sciffusion sample {model} --seeds 0-99 --out sharp/ sample.lowres=FOLDER` (low-resolution
{dc['height'] // dc['sr_factor']} x {dc['width'] // dc['sr_factor']} images, or {dc['height']} x {dc['width']} originals that it downsamples first).

## Data
{describe(data)}: {dc['examples']:,} training patches ({dc['channels']} channels, {dc['height']} x {dc['width']}) cut from the
rows above the held-out bottom 1/{data['split_every']} of the picture; the pairs are each patch and its x{dc['sr_factor']} box-downsampled copy.

## Training
{training_section(ckpt, records, Path(args.log) if args.log else None)}

## Quality ({n} held-out patches, never seen in training)
PSNR and SSIM (images in [-1, 1], `sciffusion evaluate images`) against the 8-bit originals, after the model
downsampled each original x{dc['sr_factor']} and upscaled it again; bicubic upsampling of the same input for comparison.

| method | network calls | PSNR dB | SSIM | images/s |
|---|---|---|---|---|
{table}

{measured_on("domains/images/weights/ship.py", args.argv)}"""
    return save_card(text, args.out, model)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap, sub, c = card_arguments(__doc__, TARGET, "the digits model")
    c.add_argument("--samples", type=int, default=2000, help="samples of the quality section (the model's defaults)")
    c.add_argument("--log", default=None, help="the training run's log.jsonl (or run folder)")
    c.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20, 50], help="network-call budgets of the sweep")
    c.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0], help="guidance weights of the sweep")
    c.add_argument("--sweep-samples", type=int, default=1000, help="samples per sweep row")
    c.add_argument("--inpaint-samples", type=int, default=180, help="held-out digits inpainted")
    r = sub.add_parser("sr-card", help="measure the super-resolution model and write its MODEL_CARD.md")
    r.add_argument("--model", default=str(SR_TARGET), help="the checkpoint folder (default: hubble_sr)")
    r.add_argument("--out", default=None, help="where to write the card (default: MODEL_CARD.md in the model folder)")
    r.add_argument("--samples", type=int, default=200, help="held-out patches upscaled")
    r.add_argument("--calls", type=int, nargs="+", default=[1, 2, 5, 10], help="Euler steps (network calls)")
    r.add_argument("--log", default=None, help="the training run's log.jsonl (or run folder)")
    args = ap.parse_args(argv)
    args.argv = argv
    print_card(write_sr_card if args.cmd == "sr-card" else write_card, args)


if __name__ == "__main__":
    main()
