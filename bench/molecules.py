"""Molecules benchmark: speed at EDM's reference model size and quality of the shipped model.

    python bench/molecules.py                 # speed (reference EGNN) + quality of the shipped model
    python bench/molecules.py --quality-only --samples 1000 --nfe 25 50 100
    python bench/molecules.py --speed-only --sample-nfe 50 1000

Speed: training molecules per second (real QM9 batches of 64, EDM's loss, AdamW step) and sampling
molecules per second (batch 100) at 50 and 1000 network evaluations, peak memory; on the GPU when
there is one (bf16 autocast / torch.compile variants there), else on the CPU. On the CPU a 1000-NFE
run is timed over its first steps and extrapolated (marked), unless --full.
Quality: EDM metrics of the shipped model's samples per number of network evaluations (NFE) and
sampler. Prints one table per part and appends the run to bench/RESULTS.md (unless --no-append).
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


def _import_package() -> None:
    try:
        import sciffusion  # noqa: F401
    except ImportError:
        sys.exit("install sciffusion first (README set-up command)")


_import_package()

from sciffusion.api import info as api_info  # noqa: E402
from sciffusion.core.grids import make_grid  # noqa: E402
from sciffusion.core.noise import ExampleNoise  # noqa: E402
from sciffusion.core.registry import get_domain  # noqa: E402
from sciffusion.core.samplers import get_sampler, prior  # noqa: E402


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


@torch.no_grad()
def bench_sampling(device: torch.device, nfe: int, batch: int = 100, full: bool = True, probe_steps: int = 10) -> dict:
    domain, cfg, dc, _, den, params = reference_setup(device, n_train=16)
    seeds = list(range(batch))
    tpl = domain.template(seeds, cfg, dc).to(device)
    noise = ExampleNoise(seeds)
    grid = make_grid("log_snr", den.process, nfe)
    x = prior(den.process, tpl.x0, noise, grid)
    sampler = get_sampler("dpmpp_2m")
    run_steps = nfe if full else min(nfe, probe_steps)
    sub = grid[: run_steps + 1] if run_steps < nfe else grid
    sampler(den, x, grid[:3], final_denoise=False)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    sampler(den, x, sub, final_denoise=False)
    sync(device)
    sec = (time.perf_counter() - t0) * (nfe / run_steps)
    return {"nfe": nfe, "sec": sec, "mol_per_s": batch / sec, "extrapolated": run_steps < nfe,
            "peak_mib": peak_memory_mib(device), "params": params}


# ----------------------------------------------------------------------------- quality


def bench_quality(samples: int, nfes: list[int], samplers: list[str], batch: int, model: str = "molecules") -> list[list[str]]:
    from sciffusion import api

    rows = []
    for sampler in samplers:
        for nfe in nfes:
            steps = (nfe + 1) // 2 if sampler == "heun" else nfe
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = api.sample(model, Path(tmp) / "out", n=samples, batch_size=batch, sampler=sampler, steps=steps,
                                 grid="log_snr" if sampler != "ddpm" else "discrete", progress=False)
                gen_s = time.perf_counter() - t0
                m = api.evaluate("molecules", [res.out])
            rows.append([sampler, str(nfe if sampler != "heun" else 2 * steps - 1), str(samples),
                         f"{m['atom_stability']:.1f}", f"{m['molecule_stability']:.1f}", f"{m['validity']:.1f}",
                         f"{m['valid_and_unique']:.1f}", f"{samples / gen_s:.1f}"])
            print("  " + " | ".join(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_part_arguments(ap)
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--sample-nfe", type=int, nargs="+", default=[50, 1000])
    ap.add_argument("--full", action="store_true", help="run 1000-NFE sampling fully on the CPU too")
    ap.add_argument("--samples", type=int, default=500, help="molecules per quality cell")
    ap.add_argument("--nfe", type=int, nargs="+", default=[25, 50, 100, 250, 1000])
    ap.add_argument("--samplers", nargs="+", default=None, help="default: the model's own")
    ap.add_argument("--batch", type=int, default=250, help="sampling batch for the quality cells")
    ap.add_argument("--model", default="molecules", help="checkpoint or 'molecules' for the shipped model")
    args = ap.parse_args(argv)
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
        for nfe in args.sample_nfe:
            full = args.full or device.type == "cuda" or nfe <= 50
            r = bench_sampling(device, nfe, full=full)
            rows.append([str(nfe), "100", f"{r['sec']:.1f}" + (" (extrapolated from 10 steps)" if r["extrapolated"] else ""),
                         f"**{r['mol_per_s']:.2f}**", f"{r['peak_mib']:.0f}"])
        sections.append("### Sampling at EDM's reference size (dpmpp_2m, log-SNR grid)\n\n" + table(
            ["NFE", "batch", "s / run", "molecules / s", "peak MiB"], rows))
    if not args.speed_only:
        print("quality of the shipped model ...", flush=True)
        samplers = args.samplers or [api_info(args.model)["config"]["sample"]["sampler"]]
        rows = bench_quality(args.samples, args.nfe, samplers, args.batch, args.model)
        sections.append(f"### Quality of `{args.model}` (EDM metrics, %)\n\n" + table(
            ["sampler", "NFE", "samples", "atom stab.", "mol. stab.", "valid", "V x U", "samples / s (with writing)"], rows))
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    if not args.no_append:
        print(f"appended to {append_results('Molecules', text)}")

if __name__ == "__main__":
    main()
