"""Engine benchmark: what the trainer costs over a bare PyTorch loop, and batch generation
throughput (``bench_generation``: the one sampling path, decode, and the whole ``sample()`` call,
with the network calls per sample that the sampling path counted).

Trainer overhead. The points2d test plugin's EGNN (hidden 64, 3 layers, ~92k parameters) on 300
generated point clouds, global batch 64, float32 (no bf16 autocast in any row, so the rows compare
like with like on CUDA too). Every loop collates the same batches (the trainer's, from
``batch_indices``: clouds have 3 to 6 points, so batches differ in cost) with the domain's
``collate``, applies condition dropout (p = 0.1), computes the same ``DiffusionObjective`` loss and
takes a fused AdamW step (the kernel the trainer uses). The bare loops draw times and noise with
``torch.rand``/``torch.randn`` inside the objective; the trainer's per-position noise is part of
what it costs:

  bare loop           forward, backward, optimizer step; nothing else
  bare loop + EMA     the same plus an EMA of the weights (``torch._foreach_lerp_``): the fair
                      reference, since the trainer keeps an EMA
  trainer             ``sciffusion.core.train.train`` with its defaults: EMA, deterministic
                      per-position batches, times and noise, NaN/inf detection and skip, a log
                      line (with a gradient norm) every 10 steps, no validation, sampling or
                      periodic checkpoint

A step is timed from one ``collate`` call to the next (the benchmark's points2d subclass notes the
clock on every call), so the trainer's set-up and final checkpoint stay out and everything it does
per step (logging included) counts; a run's figure is the mean over its timed steps after a
warm-up. On the CPU the clock is this process's CPU time (``time.process_time``: the loops run in
one thread without workers), on CUDA wall time. The speed of a shared machine drifts by tens of
percent within seconds, so the runs are interleaved (reference, trainer, bare loop, reference, ...),
the ratio is the median over repeats of a run's time over the mean of the two reference runs
around it, and the "runs" column shows the spread.

Run ``python bench/engine.py`` (about two minutes on 2 CPU cores with the generation half),
``--no-append`` to leave bench/RESULTS.md alone, ``--device cuda`` to pick a device (default: CPU,
and CUDA too when there is one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, import_package, run_header, sync, timed_generation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins" / "points2d"


def _points2d():
    """The points2d test plugin's module, imported from its source folder (no installation needed:
    the trainer accepts a Domain instance)."""
    if str(PLUGIN) not in sys.path:
        sys.path.insert(0, str(PLUGIN))
    import sciffusion_points2d

    return sciffusion_points2d


def _clock(device: torch.device):
    """Process CPU time on the CPU (robust to other jobs), wall time on CUDA."""
    return time.perf_counter if device.type == "cuda" else time.process_time


# ----------------------------------------------------------------------------- trainer overhead


def bench_trainer(device: torch.device | str | None = None, *, steps: int = 40, warmup: int = 10, batch: int = 64,
                  hidden: int = 64, layers: int = 3, repeats: int = 9, examples: int = 300) -> list[dict]:
    """Time per step of a bare loop, a bare loop with EMA, and ``train()``; returns table rows (dicts
    with the keys device, loop, ms/step, runs (ms/step), steps/s, examples/s, vs bare + EMA).

    A step is timed from one ``collate`` call to the next (the domain records a clock reading on
    every call), so the trainer's set-up and final checkpoint are left out and everything it does
    per step (logging included) counts. ms/step is the mean over the ``steps`` timed steps of a run,
    the median over ``repeats`` runs. The runs are interleaved (reference, trainer, bare loop,
    reference, ...) and the ratio is the median over repeats of a run's time over the mean of the
    two reference runs around it, which cancels the drifts of a shared machine."""
    import_package()
    from sciffusion.core.domain import resolve_config
    from sciffusion.core.objectives import drop_condition
    from sciffusion.core.train import batch_indices, train

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clock = _clock(device)
    p2d = _points2d()

    class Timed(p2d.PointsDomain):
        """points2d whose collate notes the time: one reading per step."""

        stamps: list[float] = []

        def collate(self, examples, data_config):
            self.stamps.append(clock())
            return super().collate(examples, data_config)

    domain = Timed()
    with tempfile.TemporaryDirectory(prefix="sciffusion-bench-train-") as tmp:
        tmp = Path(tmp)
        data = p2d.make_dataset(tmp / "data", examples, seed=0)
        cfg = resolve_config(domain, {
            "data": {"path": str(data)}, "model": {"hidden": hidden, "layers": layers},
            "train": {"steps": warmup + steps + 1, "batch_size": batch, "log_every": 10, "ckpt_every": 0,
                      "keep_last": 1, "bf16": False, "val_every": 0, "sample_every": 0}})
        train_set = domain.load_dataset(cfg["data"], "train")
        data_config = domain.data_config(train_set, cfg)
        null = domain.null_condition(cfg, data_config)
        p_drop = float(cfg["objective"]["condition_dropout"])
        n_steps = int(cfg["train"]["steps"])
        # the very batches the trainer draws (their sizes vary: compare like with like)
        batches = [batch_indices(i, seed=int(cfg["train"]["seed"]), batch_size=batch, n_examples=len(train_set))
                   .tolist() for i in range(n_steps)]

        def timed_steps() -> float:
            """Mean seconds per step after the warm-up, from the collate clock readings."""
            gaps = [b - a for a, b in zip(domain.stamps, domain.stamps[1:])][warmup:]
            domain.stamps.clear()
            return sum(gaps) / len(gaps)

        def bare(ema: bool) -> float:
            torch.manual_seed(0)
            den = domain.build_denoiser(cfg, data_config).to(device)
            objective = domain.build_objective(cfg)
            params = list(den.parameters())
            opt = torch.optim.AdamW(params, lr=float(cfg["train"]["lr"]), fused=True)
            shadow = [p.detach().clone() for p in params] if ema else None
            g = torch.Generator().manual_seed(0)
            domain.stamps.clear()
            for i in range(n_steps):
                b = domain.collate([train_set[j] for j in batches[i]], data_config).to(device)
                cond = drop_condition(b.cond, p_drop, null, generator=g)
                loss = objective(den, b.x0, cond, generator=g)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if shadow is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(shadow, params, 1.0 - 0.999)
            sync(device)
            return timed_steps()

        def trainer(i: int) -> float:
            domain.stamps.clear()
            train(domain, cfg, tmp / f"run-{i}", device=str(device), progress=False)
            return timed_steps()

        trainer(-1)  # first call: imports, allocator, kernels
        runs: dict[str, list[float]] = {"bare loop": [], "bare loop + EMA": [], "trainer (train())": []}
        for i in range(repeats):  # E T B E T B ... E: each T and B sits between two references
            runs["bare loop + EMA"].append(bare(True))
            runs["trainer (train())"].append(trainer(i))
            runs["bare loop"].append(bare(False))
        runs["bare loop + EMA"].append(bare(True))
    ref = runs["bare loop + EMA"]
    around = [(a + b) / 2 for a, b in zip(ref, ref[1:])]  # the reference runs on both sides of repeat i
    rows = []
    for loop, secs in runs.items():
        v = statistics.median(secs)
        ratio = 1.0 if loop == "bare loop + EMA" else statistics.median(a / b for a, b in zip(secs, around))
        rows.append({"device": str(device), "loop": loop, "ms/step": 1e3 * v,
                     "runs (ms/step)": f"{1e3 * min(secs):.1f}-{1e3 * max(secs):.1f}", "steps/s": 1.0 / v,
                     "examples/s": batch / v, "vs bare + EMA": ratio})
    return rows


# ----------------------------------------------------------------------------- report


def markdown_table(rows: list[dict]) -> str:
    """Rows of dicts (same keys) as a markdown table; floats with 4 significant digits."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _trainer_rows_text(rows: list[dict]) -> list[str]:
    table_rows = []
    for r in rows:
        r = dict(r)
        r["vs bare + EMA"] = f"{r['vs bare + EMA']:.3f}x"
        table_rows.append(r)
    return [markdown_table(table_rows)]




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cpu, and cuda when available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steady timings on a shared machine; 0: torch's default)")
    parser.add_argument("--steps", type=int, default=40, help="timed trainer steps per run (default 40)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved trainer repetitions (default 9)")
    parser.add_argument("--samples", type=int, default=2048, help="samples per batch generation run (default 2048)")
    parser.add_argument("--batch", type=int, default=256, help="batch generation's sample.batch_size (default 256)")
    parser.add_argument("--sample-steps", type=int, default=20, help="batch generation's sample.steps (default 20)")
    parser.add_argument("--parts", type=int, nargs="*", default=[1, 2, 4],
                        help="part counts of the job-array run (default 1 2 4; none: skip it)")
    args_list = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(args_list)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = [torch.device(args.device)] if args.device else \
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    start = time.perf_counter()

    rows: list[dict] = []
    for dev in devices:
        rows += bench_trainer(dev, steps=args.steps, repeats=args.repeats)
    sections = ["### Trainer overhead (points2d EGNN, hidden 64, 3 layers, batch 64, float32, fused AdamW)", "",
                *_trainer_rows_text(rows)]
    for dev in devices:
        out = bench_generation(dev, n=args.samples, batch=args.batch, steps=args.sample_steps)
        sections += ["", f"### Batch generation ({dev})", "", markdown_table(out)]
        if dev.type == "cpu":
            whole, decoded = out[2]["seconds"], out[1]["seconds"]
            sections += ["", f"I/O share of `sample()` (decode excluded: atomic CSV writes, hashes, manifest): "
                             f"{max(0.0, 1 - decoded / whole):.0%}"]
    if args.parts:
        rows_p = bench_parts(n=args.samples, batch=args.batch, steps=args.sample_steps, parts=args.parts)
        sections += ["", f"### Generation as independent parts (--part K/P, one thread each, {os.cpu_count()} cores)",
                     "", markdown_table(rows_p)]

    header = run_header("engine.py", args_list, devices, [f"- total runtime: {time.perf_counter() - start:.0f} s"])
    text = "\n".join([*header, "", *sections]) + "\n"
    title = "Engine: trainer overhead and batch generation"
    print(f"## {title}\n\n{text}")
    if not args.no_append:
        print(f"\nappended to {append_results(title, text)}", file=sys.stderr)


# ----------------------------------------------------------------------------- batch generation


def _register_points2d(folder: Path) -> None:
    """Make the points2d plugin visible to the domain registry (``sample()`` finds a checkpoint's
    domain by its entry point): the module from its source folder, plus a minimal dist-info with the
    entry point in ``folder``. Nothing is installed anywhere."""
    _points2d()
    from sciffusion.core.registry import available

    if any(d.name == "points2d" for d in available()):
        return
    info = folder / "sciffusion_points2d-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sciffusion-points2d\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[sciffusion.domains]\npoints2d = sciffusion_points2d:PointsDomain\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()


def _random_checkpoint(tmp: Path, hidden: int, layers: int, sample: list[str]):
    """A points2d checkpoint of random weights (seed 0) in ``tmp/model``, the plugin registered from
    ``tmp/site``: (domain, config, data config, checkpoint folder)."""
    from sciffusion.core.checkpoint import save_checkpoint
    from sciffusion.core.domain import resolve_config
    from sciffusion.core.registry import get_domain

    _register_points2d(tmp / "site")
    domain = get_domain("points2d")
    cfg = resolve_config(domain, overrides=[f"model.hidden={hidden}", f"model.layers={layers}", *sample])
    data_config = {"size_counts": [0, 0, 0, 25, 25, 25, 25], "label_counts": [50, 50]}
    torch.manual_seed(0)
    net = domain.build_denoiser(cfg, data_config).network
    ckpt = save_checkpoint(tmp / "model", model=net.state_dict(), ema=net.state_dict(),
                           meta={"domain": "points2d", "step": 0, "config": cfg, "data_config": data_config})
    return domain, cfg, data_config, ckpt


def bench_generation(device: torch.device | str | None = None, *, n: int = 2048, batch: int = 256, steps: int = 20,
                     sampler: str = "dpmpp_2m", hidden: int = 64, layers: int = 3, repeats: int = 3) -> list[dict]:
    """Samples per second of batch generation (points2d EGNN, random weights, ``sampler`` on the
    Karras grid), three ways: the one sampling path alone (``core.sampling.generate_batch``:
    template, prior, sampler); plus the domain's decode; and the whole
    ``sciffusion.core.generate.sample`` call into a temporary folder (checkpoint load, decode, one
    CSV file per sample written atomically on the writer thread, manifest parts, manifest.jsonl,
    run.json). Best of ``repeats`` interleaved runs. Returns table rows (dicts: device, what, n,
    batch, steps, network calls (per sample, as the sampling path counted them), seconds,
    samples/s, vs sampling only)."""
    import_package()
    import shutil

    from sciffusion.core import generate as G
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.core.domain import denoiser_from_checkpoint
    from sciffusion.core.sampling import SampleSpec

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="sciffusion-bench-gen-") as tmp:
        tmp = Path(tmp)
        domain, cfg, data_config, ckpt_dir = _random_checkpoint(tmp, hidden, layers, [
            f"sample.sampler='{sampler}'", f"sample.steps={steps}", f"sample.batch_size={batch}",
            "sample.grid='karras'", f"sample.shard_size={batch}"])
        den = denoiser_from_checkpoint(domain, load_checkpoint(ckpt_dir), cfg, device=device)
        spec = SampleSpec.from_config(cfg["sample"], den.process)
        seeds = list(range(n))

        def loop(decode: bool) -> tuple[float, int]:
            return timed_generation(domain, den, seeds, cfg, data_config, spec, device, batch, decode)

        def whole(i: int) -> tuple[float, int]:
            folder = tmp / f"out{i}"
            t0 = time.perf_counter()
            res = G.sample(ckpt_dir, folder, n=n, device=str(device), progress=False)
            secs = time.perf_counter() - t0
            files = len(list(folder.glob("*.csv")))
            if not files == res.files == res.generated == n:
                raise AssertionError(f"generation wrote {files} files, expected {n}")
            shutil.rmtree(folder)
            return secs, res.network_calls

        loop(False)  # warm-up (allocator, kernels)
        G.sample(ckpt_dir, tmp / "warm", n=batch, device=str(device), progress=False)  # warm-up
        runs = {"sampling only (generate_batch)": lambda i: loop(False),
                "sampling + decode": lambda i: loop(True),
                "sample(): + decode, atomic CSV writes, manifest": whole}
        best = {k: (float("inf"), 0) for k in runs}
        for i in range(repeats):
            for what, fn in runs.items():
                best[what] = min(best[what], fn(i))
    base = n / best["sampling only (generate_batch)"][0]
    return [{"device": str(device), "what": what, "n": n, "batch": batch, "steps": steps, "network calls": calls,
             "seconds": secs, "samples/s": n / secs, "vs sampling only": f"{n / secs / base:.2f}x"}
            for what, (secs, calls) in best.items()]


def bench_parts(n: int = 2048, batch: int = 256, steps: int = 20, parts=(1, 2, 4), hidden: int = 64,
                layers: int = 3) -> list[dict]:
    """Generation as independent parts (``sample(..., part="K/P")``, a job array on one machine): P
    processes of one thread each started at once on one folder, timed from the first start to the
    last exit (process start-up and checkpoint loading included); the manifest is checked complete.
    Rows: parts, n, seconds, samples/s, speed-up over one part."""
    import_package()
    import subprocess


    rows = []
    with tempfile.TemporaryDirectory(prefix="sciffusion-bench-parts-") as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        _, _, _, ckpt = _random_checkpoint(tmp, hidden, layers, [f"sample.steps={steps}", f"sample.batch_size={batch}",
                                                                 f"sample.shard_size={batch}"])
        child = tmp / "part.py"
        child.write_text(
            "import sys, torch\nfrom pathlib import Path\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import engine\nengine._register_points2d(Path(sys.argv[3]))\ntorch.set_num_threads(1)\n"
            "from sciffusion.core.generate import sample\n"
            f"sample(sys.argv[1], sys.argv[2], n={n}, progress=False, part=sys.argv[4])\n")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for p in parts:
            out = tmp / f"out{p}"
            t0 = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, str(child), str(ckpt), str(out), str(site), f"{k}/{p}"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(p)]
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"part failed: {err[-500:]}")
            secs = time.perf_counter() - t0
            lines = (out / "manifest.jsonl").read_text().splitlines()
            if len(lines) != n:
                raise AssertionError(f"{p} parts: the manifest lists {len(lines)} samples, expected {n}")
            rows.append({"parts": p, "n": n, "seconds": secs, "samples/s": n / secs})
    for r in rows:
        r["speed-up"] = f"{r['samples/s'] / rows[0]['samples/s']:.2f}x"
    return rows


if __name__ == "__main__":
    main()
