"""Vocoder benchmark: training speed of a vocoder config, and copy-synthesis quality of a vocoder
checkpoint per few-step schedule (sampler x grid x steps) on FSDD test clips, with Griffin-Lim as
the anchor. Prints one table per part and appends the run to bench/RESULTS.md.

    OMP_NUM_THREADS=1 python bench/vocoder.py --speed domains/audio/configs/vocoder_small.toml
    OMP_NUM_THREADS=1 python bench/vocoder.py --model runs/vocoder --clips 25 \
        --schedules ddpm:karras:6 ddpm:log_snr:6 ddpm:uniform:6 ddim:karras:6 dpmpp_2m:karras:6 ddpm:uniform:50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import append_results, run_header, table

DEFAULT_SCHEDULES = ["ddpm:karras:6", "ddpm:log_snr:6", "ddpm:uniform:6", "ddim:karras:6", "ddim:log_snr:6",
                     "dpmpp_2m:karras:6", "ddpm:karras:12", "ddpm:uniform:50"]


def speed(config: str, steps: int) -> tuple[str, list[str]]:
    """Seconds per training step of ``config`` (the trainer's own examples/s over the last ``steps``)."""
    from sciffusion.core.domain import resolve_config
    from sciffusion.core.registry import get_domain
    from sciffusion.core.train import read_log, train

    domain = get_domain("vocoder")
    warm = 5
    cfg = resolve_config(domain, config, [f"train.steps={steps + warm}", f"train.log_every={warm}",
                                          f"train.ckpt_every={steps + warm}", "train.sample_every=0",
                                          "train.val_every=0", "train.warmup_steps=0"])
    with tempfile.TemporaryDirectory() as tmp:
        train(domain, cfg, Path(tmp) / "run", device="cpu", progress=False)
        logs = read_log(Path(tmp) / "run")
    eps = [r["examples_per_s"] for r in logs if "examples_per_s" in r][1:]  # the first window holds start-up
    B = int(cfg["train"]["batch_size"])
    s_per_step = B / float(np.mean(eps))
    m = cfg["model"]
    params = sum(p.numel() for p in domain.build_network(m, {"mel": domain.mel_config(cfg).to_dict()}).parameters())
    row = [Path(config).name, f"{m['residual_channels']} x {m['layers']} (cycle {m['dilation_cycle']})",
           f"{params / 1e3:.0f} k", f"{B} x {cfg['data']['segment_seconds']} s", f"{s_per_step:.3f}",
           f"{1 / s_per_step:.2f}"]
    return table(["config", "channels x layers", "parameters", "batch", "s / step", "steps / s"], [row]), row


COPY_COLUMNS = ["sampler", "grid", "network calls", "SC", "LSD (dB)", "MCD (dB)", "pad rms", "RTF (s / s audio)"]


def copy_scores(ref: torch.Tensor, wave: torch.Tensor, compute_s: float, rate: int) -> dict:
    """Spectral convergence, LSD and MCD of ``wave`` against ``ref`` (B, L) over each clip's audio
    (before FSDD's zero padding), the output level in the padding, and the real-time factor."""
    from sciffusion.domains.audio.metrics import log_spectral_distance, mel_cepstral_distortion, spectral_convergence
    from sciffusion.domains.audio.vocoder import trailing_silence_start

    act = [trailing_silence_start(r) for r in ref]
    pad = np.concatenate([wave[i, a:].numpy() ** 2 for i, a in enumerate(act)] + [np.zeros(1)])
    return {"sc": float(np.mean([spectral_convergence(ref[i, :a], wave[i, :a]) for i, a in enumerate(act)])),
            "lsd": float(np.mean([log_spectral_distance(ref[i, :a], wave[i, :a]) for i, a in enumerate(act)])),
            "mcd": float(np.mean([mel_cepstral_distortion(ref[i, :a], wave[i, :a]) for i, a in enumerate(act)])),
            "pad": float(np.sqrt(np.mean(pad))), "rtf": compute_s / (ref.numel() / rate)}


def copy_synthesis(model: str, clips: int, schedules: list[str], gl_iters: int):
    """(the vocoder, rows): Griffin-Lim, then the vocoder at each ``sampler:grid:steps`` schedule
    (``Vocoder.with_sample``), on ``clips`` FSDD test clips spread over the split. Each row:
    sampler, grid, network calls (None for Griffin-Lim) and ``copy_scores``."""
    from sciffusion.domains.audio.data import load_fsdd
    from sciffusion.domains.audio.mel import mel_to_waveform, waveform_to_mel
    from sciffusion.domains.audio.vocoder import Vocoder

    voc = Vocoder(model)
    test = load_fsdd("test", length=8000)
    idx = np.linspace(0, len(test) - 1, clips).round().astype(int).tolist()
    ref = test.waves[idx]
    mel = waveform_to_mel(ref, voc.mel_config)
    rate = voc.mel_config.sample_rate
    t0 = time.perf_counter()
    gl = mel_to_waveform(mel, voc.mel_config, n_iter=gl_iters, length=ref.shape[1])
    rows = [{"sampler": f"Griffin-Lim ({gl_iters} it.)", "grid": "-", "calls": None,
             **copy_scores(ref, gl, time.perf_counter() - t0, rate)}]
    for schedule in schedules:
        name, grid, steps = schedule.split(":")
        v = voc.with_sample(sampler=name, grid=grid, steps=int(steps))
        t0 = time.perf_counter()
        out = v.sample(mel, idx, ref.shape[1])
        rows.append({"sampler": name, "grid": grid, "calls": out.network_calls,
                     **copy_scores(ref, v.waveforms(out), time.perf_counter() - t0, rate)})
        print(" | ".join(copy_cells(rows[-1])), file=sys.stderr, flush=True)
    return voc, rows


def copy_cells(row: dict) -> list[str]:
    calls = "-" if row["calls"] is None else str(row["calls"])
    return [row["sampler"], row["grid"], calls, f"{row['sc']:.3f}", f"{row['lsd']:.2f}", f"{row['mcd']:.2f}",
            f"{row['pad']:.4f}", f"{row['rtf']:.3f}"]


def quality(model: str, clips: int, schedules: list[str], gl_iters: int) -> str:
    voc, rows = copy_synthesis(model, clips, schedules, gl_iters)
    head = (f"### Copy-synthesis of {clips} FSDD test clips with `{model}` (step {voc.ckpt.step}); scores over each "
            "clip's audio (before its zero padding); pad rms = output level in the padding\n\n")
    return head + table(COPY_COLUMNS, [copy_cells(r) for r in rows])


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", metavar="CONFIG", help="time training steps of this vocoder config (TOML)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps")
    ap.add_argument("--model", help="vocoder checkpoint or run folder for the quality sweep")
    ap.add_argument("--clips", type=int, default=25)
    ap.add_argument("--schedules", nargs="+", default=DEFAULT_SCHEDULES,
                    help="sampler:grid:steps (sample.* keys of each row; the table reports the network calls)")
    ap.add_argument("--gl-iters", type=int, default=32)
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args(argv)
    if not (args.speed or args.model):
        ap.error("give --speed CONFIG and/or --model CHECKPOINT")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    parts = []
    if args.speed:
        text, _ = speed(args.speed, args.steps)
        parts.append(f"### Training speed on {torch.get_num_threads()} thread(s), {args.steps} steps\n\n" + text)
    if args.model:
        parts.append(quality(args.model, args.clips, args.schedules, args.gl_iters))
    body = "\n\n".join(parts)
    print(body)
    if not args.no_append:
        header = run_header("vocoder.py", argv, torch.device("cpu"))
        append_results("Vocoder", "\n".join(header) + "\n\n" + body + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
