"""Audio benchmark: training and generation speed of the mel model (and the neural vocoder), and the
quality table of the shipped models against FSDD's test split.

    python bench/audio.py                          # speed + quality (1000 clips per row)
    python bench/audio.py --speed-only
    python bench/audio.py --quality-only --samples 500 --guidance 0 1 2

Speed: training clips per second (FSDD batches of 32 1-s clips, mels computed in the step, AdamW),
generation real-time factor (RTF: seconds of compute per second of audio, lower is better; 0.01 is
100x faster than real time) for mel sampling + Griffin-Lim and for the neural vocoder at its step
counts, peak memory; on the GPU when there is one (bf16 autocast / torch.compile there), else the CPU.
Quality: DiffWave's protocol (FID, IS, mIS, AM, NDB/K against the training split; accuracy and
per-class FID of the digits asked for), for the shipped model and, as anchors, the test split itself
and its Griffin-Lim reconstruction. Prints the tables and appends the run to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_part_arguments, append_results, bench_device, peak_memory_mib,  # noqa: E402
                    precision_variants, run_header, sync, table, time_training_steps)

ROOT = Path(__file__).resolve().parents[1]

try:
    import sciffusion  # noqa: F401
except ImportError:
    sys.exit("install sciffusion first (README set-up command)")

from sciffusion.core.checkpoint import load_checkpoint  # noqa: E402
from sciffusion.core.config import load_toml  # noqa: E402
from sciffusion.core.domain import denoiser_from_checkpoint, resolve_config  # noqa: E402
from sciffusion.core.registry import get_domain  # noqa: E402
from sciffusion.core.sampling import SampleSpec, generate_batch, guidance_null  # noqa: E402
from sciffusion.domains.audio.data import fsdd_root, load_fsdd  # noqa: E402

CONFIG = ROOT / "domains" / "audio" / "configs" / "fsdd_small.toml"


def clips(n: int, length: int = 8000) -> list[dict]:
    """FSDD training clips (or, without FSDD, noise bursts: speed does not depend on content)."""
    if fsdd_root() is not None:
        data = load_fsdd("train", length=length)
        return [{"wave": data.waves[i % len(data)], "label": data.label_names[int(data.labels[i % len(data)])],
                 "sample_rate": 8000} for i in range(n)]
    g = torch.Generator().manual_seed(0)
    return [{"wave": 0.1 * torch.randn(length, generator=g), "label": str(i % 10), "sample_rate": 8000} for i in range(n)]


def mel_model(device: torch.device):
    """The shipped mel model when there is one, else a fresh network of the shipped configuration."""
    domain = get_domain("audio")
    shipped = domain.default_checkpoint()
    if shipped is not None:
        ckpt = load_checkpoint(shipped)
        cfg = resolve_config(domain, base=ckpt.config, base_name=str(shipped / "checkpoint.json"))
        return domain, cfg, ckpt.data_config, denoiser_from_checkpoint(domain, ckpt, cfg, device=device), "shipped"
    cfg = resolve_config(domain, load_toml(CONFIG))
    dc = domain.data_config(clips(20), cfg)
    dc["label_names"] = [str(i) for i in range(10)]
    return domain, cfg, dc, domain.build_denoiser(cfg, dc).to(device).eval(), "untrained (shipped size)"


# ----------------------------------------------------------------------------- speed


def bench_training(device: torch.device, steps: int, batch: int = 32, bf16: bool = False, compile_: bool = False) -> dict:
    domain = get_domain("audio")
    cfg = resolve_config(domain, load_toml(CONFIG))
    examples = clips(batch * (steps + 2))
    dc = domain.data_config(examples, cfg)
    den = domain.build_denoiser(cfg, dc).to(device)

    def batch_at(i):  # mels are part of the step
        return domain.collate(examples[i * batch:(i + 1) * batch], dc).to(device)

    sec = time_training_steps(den, domain.build_objective(cfg), batch_at, steps, device, bf16, compile_)
    params = sum(p.numel() for p in den.network.parameters())
    return {"params": params, "sec_per_step": sec, "clips_per_s": batch / sec, "peak_mib": peak_memory_mib(device)}


def sample_overrides(steps: int | None, gl_iters: int | None) -> dict:
    """The ``[sample]`` keys a generation benchmark changes (none: the model's own)."""
    return {k: v for k, v in (("steps", steps), ("griffin_lim_iters", gl_iters)) if v}


@torch.no_grad()
def bench_generation(device: torch.device, batch: int, steps: int | None = None, gl_iters: int | None = None) -> dict:
    """Mel sampling (``core.sampling.generate_batch``) with the model's default sampler, steps and
    guidance, then Griffin-Lim; RTFs and the network calls counted."""
    domain, cfg, dc, den, which = mel_model(device)
    cfg = resolve_config(domain, {"sample": sample_overrides(steps, gl_iters)}, base=cfg)
    spec = SampleSpec.from_config(cfg["sample"], den.process)
    null = guidance_null(domain, cfg, dc, spec)
    seeds = list(range(batch))
    warm = SampleSpec.from_config(dict(cfg["sample"], steps=2), den.process)
    generate_batch(domain, den, seeds, cfg, dc, warm, device=device, null=null)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    out = generate_batch(domain, den, seeds, cfg, dc, spec, device=device, null=null)
    sync(device)
    t1 = time.perf_counter()
    domain.decode(out.x0, out.cond, dc)
    t2 = time.perf_counter()
    audio_s = batch * float(dc["seconds"])
    return {"which": which, "sampler": spec.name, "calls": out.network_calls, "guidance": spec.guidance,
            "gl": int(cfg["sample"]["griffin_lim_iters"]), "mel_rtf": (t1 - t0) / audio_s,
            "gl_rtf": (t2 - t1) / audio_s, "rtf": (t2 - t0) / audio_s, "peak_mib": peak_memory_mib(device)}


@torch.no_grad()
def bench_vocoder(device: torch.device, batch: int, steps_list: list[int]) -> list[dict]:
    """The shipped neural vocoder on FSDD mels at each step count (its default sampler and grid)."""
    from sciffusion.domains.audio.mel import waveform_to_mel
    from sciffusion.domains.audio.vocoder import Vocoder, VocoderDomain

    shipped = VocoderDomain().default_checkpoint()
    if shipped is None:
        return []
    voc = Vocoder(shipped, device)
    L = int(voc.ckpt.data_config["samples"])
    waves = torch.stack([torch.as_tensor(c["wave"]) for c in clips(batch, L)])
    mel = waveform_to_mel(waves, voc.mel_config)
    out = []
    for steps in steps_list:
        v = voc.with_sample(steps=steps)
        v.sample(mel[:2], [0, 1], L)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        res = v.sample(mel, list(range(batch)), L)
        sync(device)
        out.append({"calls": res.network_calls, "grid": v.config["sample"]["grid"], "sampler": v.spec.name,
                    "rtf": (time.perf_counter() - t0) / (batch * L / voc.mel_config.sample_rate),
                    "peak_mib": peak_memory_mib(device)})
    return out


# ----------------------------------------------------------------------------- quality


def quality_rows(samples: int, guidances: list[float], batch: int) -> list[list[str]]:
    from sciffusion import api

    domain = get_domain("audio")
    rows = []

    def row(name: str, m: dict, extra: str = "") -> None:
        rows.append([name, str(int(m["n"])), f"{m['fid']:.2f}", f"{m['is']:.2f}", f"{m['mis']:.1f}", f"{m['am']:.3f}",
                     f"{m['ndb_k']:.2f}", f"{100 * m['accuracy']:.1f}" if "accuracy" in m else "-",
                     f"{m['fid_class']:.2f}" if "fid_class" in m else "-", extra])
        print("  " + " | ".join(rows[-1]), flush=True)

    anchors = domain.reference_metrics()
    row("FSDD test split (250 clips)", anchors["test"])
    row("test split, Griffin-Lim (32 it.) of its mels", anchors["griffin_lim"])
    if domain.default_checkpoint() is None:
        return rows
    for g in guidances:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = api.sample("audio", Path(tmp) / "out", n=samples, batch_size=batch, guidance=g, progress=False)
            sec = time.perf_counter() - t0
            m = api.evaluate("audio", [res.out])
        row(f"shipped model, guidance {g:g}", m, f"{samples / sec:.1f}")
    return rows


# ----------------------------------------------------------------------------- main


def speedup(rtf: float) -> str:
    x = 1.0 / rtf
    return f"{x:.0f}x faster than real time" if x >= 10 else (f"{x:.1f}x faster than real time" if x >= 1 else
                                                                f"{rtf:.1f}x slower than real time")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_part_arguments(ap)
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=64, help="generation batch")
    ap.add_argument("--vocoder-steps", type=int, nargs="+", default=[6, 12, 50],
                    help="sample.steps of the shipped vocoder per row (the table reports the network calls)")
    ap.add_argument("--samples", type=int, default=1000, help="clips per quality row")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    args = ap.parse_args(argv)
    device = bench_device(args)
    sections = []
    if not args.quality_only:
        print("training speed ...", flush=True)
        rows = []
        for name, bf16, comp in precision_variants(device):
            r = bench_training(device, args.train_steps, bf16=bf16, compile_=comp)
            rows.append([name, f"{r['params']:,}", "32", f"{r['sec_per_step']:.3f}", f"**{r['clips_per_s']:.1f}**",
                         f"{r['peak_mib']:.0f}"])
        sections.append("### Training the mel model (fsdd_small: 1-D U-Net, 1 s FSDD clips)\n\n" + table(
            ["precision", "parameters", "batch", "s / step", "clips / s", "peak MiB"], rows))
        print("generation speed ...", flush=True)
        r = bench_generation(device, args.batch)
        rows = [[r["which"], f"{r['sampler']}, guidance {r['guidance']:g}", str(r["calls"]), str(args.batch),
                 f"{r['mel_rtf']:.4f}", f"Griffin-Lim {r['gl']} it.: {r['gl_rtf']:.4f}",
                 f"**{r['rtf']:.4f}** ({speedup(r['rtf'])})", f"{r['peak_mib']:.0f}"]]
        for v in bench_vocoder(device, args.batch, args.vocoder_steps):
            rows.append(["shipped vocoder (on FSDD mels)", f"{v['sampler']} ({v['grid']} grid)", str(v["calls"]),
                         str(args.batch), "-", f"{v['rtf']:.4f}", f"**{v['rtf']:.4f}** ({speedup(v['rtf'])})",
                         f"{v['peak_mib']:.0f}"])
        sections.append("### Generation real-time factor (seconds of compute per second of 8 kHz audio)\n\n" + table(
            ["model", "sampler", "network calls", "batch", "mel RTF", "waveform RTF", "total RTF", "peak MiB"], rows))
    if not args.speed_only:
        if fsdd_root() is None:
            print("quality: skipped, FSDD not found (../shared/data/fsdd or $SCIFFUSION_FSDD)")
        else:
            print("quality ...", flush=True)
            rows = quality_rows(args.samples, args.guidance, args.batch)
            sections.append("### Quality against FSDD (DiffWave's protocol; classifier trained here on the train split)\n\n"
                            + table(["clips", "n", "FID", "IS", "mIS", "AM", "NDB/K", "accuracy %", "FID-class",
                                     "clips / s (with writing)"], rows))
    text = "\n".join(run_header("audio.py", argv if argv is not None else sys.argv[1:], device)) + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    if not args.no_append:
        print(f"appended to {append_results('Audio', text)}")


if __name__ == "__main__":
    main()
