"""Molecules benchmark: speed at EDM's reference model size and quality of the shipped model.

    python bench/molecules.py                 # speed (reference EGNN) + quality of the shipped model
    python bench/molecules.py --quality-only --samples 1000 --steps 25 50 100
    python bench/molecules.py --speed-only --sample-steps 50 1000
    python bench/molecules.py --quality-only --samplers dpmpp_2m heun --set sample.grid=log_snr

Every sample goes through the one sampling path (``core.sampling``: the [sample] table -> SampleSpec
-> generate_batch), so ``--samplers``, ``--steps`` and ``--set sample.KEY=VALUE`` mean what they mean
for ``sciffusion sample``; the network-call columns show the calls that path counted (50 DDPM steps
on EDM's schedule, whose sigma(0) > 0, are 51 calls: the last is the final denoising call).

Speed: training molecules per second (real QM9 batches of 64, EDM's loss, AdamW step) and sampling
molecules per second (batch 100) with the domain's default sampler at each of --sample-steps, peak
memory; on the GPU when there is one (bf16 autocast / torch.compile variants there), else on the CPU.
On the CPU a run of more than 50 steps is timed over its first 10 steps (with their final denoising
call) and extrapolated per network call to the calls the whole run makes (marked), unless --full.
Quality: EDM metrics of the model's samples per sampler and step count, written by
``sciffusion.api.sample`` and scored by ``sciffusion.api.evaluate``. Prints one table per part and
appends the run to bench/RESULTS.md (unless --no-append).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_part_arguments, append_results, bench_device, counted_calls, import_package,  # noqa: E402
                    peak_memory_mib, precision_variants, run_header, sample_overrides, table, time_training_steps,
                    timed_generation)

import_package()

from sciffusion.api import info as api_info  # noqa: E402
from sciffusion.core.domain import resolve_config  # noqa: E402
from sciffusion.core.registry import get_domain  # noqa: E402
from sciffusion.core.sampling import SampleSpec  # noqa: E402


# ----------------------------------------------------------------------------- speed


def reference_setup(device: torch.device, n_train: int = 4096):
    """EDM's reference network on real QM9 batches."""
    from sciffusion.domains.molecules.data import load_qm9
    from sciffusion.domains.molecules.egnn import count_parameters

    domain = get_domain("molecules")
    cfg = domain.default_config()
    mols = load_qm9("train")
    data_config = domain.data_config(mols, cfg)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(mols), generator=g)[:n_train].tolist()
    subset = [mols[i] for i in pick]
    den = domain.build_denoiser(cfg, data_config).to(device)
    return domain, cfg, data_config, subset, den, count_parameters(den.network)


def bench_training(device: torch.device, steps: int, batch: int = 64, bf16: bool = False, compile_: bool = False) -> dict:
    domain, cfg, dc, mols, den, params = reference_setup(device)
    batches = [domain.collate(mols[i * batch:(i + 1) * batch], dc).to(device) for i in range(steps + 2)]
    sec = time_training_steps(den, domain.build_objective(cfg), batches.__getitem__, steps, device, bf16, compile_)
    timed = mols[2 * batch:(steps + 2) * batch]  # the batches after the two warm-up steps
    return {"params": params, "sec_per_step": sec, "mol_per_s": batch / sec, "peak_mib": peak_memory_mib(device),
            "atoms_per_mol": sum(m.num_atoms for m in timed) / len(timed)}


def bench_sampling(device: torch.device, steps: int, overrides: list[str], batch: int = 100, full: bool = True,
                   probe_steps: int = 10) -> dict:
    """Molecules per second of the reference network at ``steps`` with the domain's sampler and the
    ``sample.*`` overrides; ``full=False`` times the first ``probe_steps`` steps and extrapolates."""
    domain, cfg, dc, _, den, params = reference_setup(device, n_train=16)
    den.eval()
    cfg = resolve_config(domain, overrides=[*overrides, f"sample.steps={steps}"])
    spec = SampleSpec.from_config(cfg["sample"], den.process)
    seeds = list(range(batch))
    timed_generation(domain, den, seeds, cfg, dc, dataclasses.replace(spec, grid=spec.grid[:3]), device, batch)  # warm-up
    run = spec if full or steps <= probe_steps else dataclasses.replace(spec, grid=spec.grid[:probe_steps + 1])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec, calls = timed_generation(domain, den, seeds, cfg, dc, run, device, batch)
    total = calls if run is spec else counted_calls(domain, den.process, seeds, cfg, dc, spec)
    sec *= total / calls
    return {"sampler": spec.name, "grid": cfg["sample"]["grid"], "steps": steps, "calls": total,
            "probe_calls": None if run is spec else calls, "sec": sec, "mol_per_s": batch / sec,
            "peak_mib": peak_memory_mib(device), "params": params}


# ----------------------------------------------------------------------------- quality


def bench_quality(samples: int, steps_list: list[int], samplers: list[str], batch: int, overrides: list[str],
                  model: str = "molecules") -> list[list[str]]:
    """One row per sampler and step count: EDM metrics of ``samples`` molecules made by ``api.sample``
    (the model's config with the sampler, steps and overrides), with the network calls it counted."""
    from sciffusion import api

    rows = []
    for sampler in samplers:
        for steps in steps_list:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = api.sample(model, Path(tmp) / "out", n=samples, batch_size=batch, sampler=sampler, steps=steps,
                                 overrides=overrides, progress=False)
                gen_s = time.perf_counter() - t0
                grid = json.loads((res.out / "run.json").read_text())["config"]["sample"]["grid"]
                m = api.evaluate("molecules", [res.out])
            rows.append([sampler, grid, str(steps), str(res.network_calls), str(samples),
                         f"{m['atom_stability']:.1f}", f"{m['molecule_stability']:.1f}", f"{m['validity']:.1f}",
                         f"{m['valid_and_unique']:.1f}", f"{samples / gen_s:.1f}"])
            print("  " + " | ".join(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_part_arguments(ap)
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--sample-steps", type=int, nargs="+", default=[50, 1000], help="sampler steps of the speed part")
    ap.add_argument("--full", action="store_true", help="time every speed run whole on the CPU too")
    ap.add_argument("--samples", type=int, default=500, help="molecules per quality cell")
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 250, 1000], help="sampler steps per quality cell")
    ap.add_argument("--samplers", nargs="+", default=None, help="quality samplers (default: the model's own)")
    ap.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="sample.KEY=VALUE",
                    help="sample.* overrides for both parts, as on the sciffusion sample command line")
    ap.add_argument("--batch", type=int, default=250, help="sampling batch for the quality cells")
    ap.add_argument("--model", default="molecules", help="checkpoint or 'molecules' for the shipped model")
    args = ap.parse_args(argv)
    overrides = sample_overrides(args.overrides)
    device = bench_device(args)
    sections = []
    header = run_header("molecules.py", argv if argv is not None else sys.argv[1:], device)
    if not args.quality_only:
        print("training speed ...", flush=True)
        rows = []
        for name, bf16, comp in precision_variants(device):
            r = bench_training(device, args.train_steps, bf16=bf16, compile_=comp)
            rows.append([name, f"{r['params']:,}", "64", f"{r['atoms_per_mol']:.1f}", f"{r['sec_per_step']:.3f}",
                         f"**{r['mol_per_s']:.1f}**", f"{r['peak_mib']:.0f}"])
        sections.append("### Training at EDM's reference size (EGNN 9 x 256, QM9 batches)\n\n" + table(
            ["precision", "parameters", "batch", "atoms / molecule", "s / step", "molecules / s", "peak MiB"], rows))
        print("sampling speed ...", flush=True)
        rows = []
        for steps in args.sample_steps:
            r = bench_sampling(device, steps, overrides, full=args.full or device.type == "cuda" or steps <= 50)
            probe = f" (extrapolated from {r['probe_calls']} calls)" if r["probe_calls"] else ""
            rows.append([r["sampler"], r["grid"], str(steps), str(r["calls"]), "100", f"{r['sec']:.1f}" + probe,
                         f"**{r['mol_per_s']:.2f}**", f"{r['peak_mib']:.0f}"])
        sections.append("### Sampling at EDM's reference size (random weights)\n\n" + table(
            ["sampler", "grid", "steps", "network calls", "batch", "s / run", "molecules / s", "peak MiB"], rows))
    if not args.speed_only:
        print("quality ...", flush=True)
        samplers = args.samplers or [api_info(args.model)["config"]["sample"]["sampler"]]
        rows = bench_quality(args.samples, args.steps, samplers, args.batch, overrides, args.model)
        sections.append(f"### Quality of `{args.model}` (EDM metrics, %)\n\n" + table(
            ["sampler", "grid", "steps", "network calls", "samples", "atom stab.", "mol. stab.", "valid", "V x U",
             "samples / s (with writing)"], rows))
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    if not args.no_append:
        print(f"appended to {append_results('Molecules', text)}")


if __name__ == "__main__":
    main()
