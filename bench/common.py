"""Helpers shared by the benchmark scripts (run as `python bench/NAME.py`, so this imports as `common`)."""

from __future__ import annotations

import importlib.util
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_package() -> None:
    """Make ``sciffusion`` importable: the installed package, else the repository root (pyproject maps
    the package onto it, so the benches run from a plain checkout too)."""
    try:
        import sciffusion  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("sciffusion", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["sciffusion"] = module
        spec.loader.exec_module(module)


def cpu_model() -> str:
    """The CPU's model name (``sciffusion.core.provenance``)."""
    import_package()
    from sciffusion.core.provenance import cpu_model as model

    return model()


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device) -> float:
    """Peak CUDA memory allocated on a GPU; peak resident set size of the process on the CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def run_header(script: str, argv: list[str], device, extra: list[str] = ()) -> list[str]:
    """The date, machine, device(s), versions and command line that head every appended run;
    ``device`` is one torch device or a list of them, ``extra`` more lines (other versions, runtime)."""
    import datetime as dt
    import os
    import shlex

    import torch

    devices = device if isinstance(device, (list, tuple)) else [device]
    return [
        f"- date (UTC): {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S}",
        f"- machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} cores (torch threads: {torch.get_num_threads()})",
        f"- device: {', '.join(device_name(d) for d in devices)}; torch {torch.__version__}",
        f"- command: `{shlex.join(['python', f'bench/{script}', *argv])}`",
        *extra,
    ]


def append_results(section: str, text: str) -> Path:
    """Append one run under a ``## section`` heading to bench/RESULTS.md (created when missing)."""
    path = Path(__file__).resolve().parent / "RESULTS.md"
    if not path.exists():
        path.write_text("# Benchmark results\n")
    with open(path, "a") as f:
        f.write(f"\n## {section}\n\n" + text.rstrip() + "\n")
    return path


def precision_variants(device) -> list[tuple[str, bool, bool]]:
    """(name, bf16 autocast, torch.compile) rows a training benchmark times: float32, plus bf16 and
    bf16 + compile on a GPU."""
    variants = [("float32", False, False)]
    if device.type == "cuda":
        variants += [("bf16 autocast", True, False), ("bf16 + torch.compile", True, True)]
    return variants


def time_training_steps(denoiser, objective, batch_at, steps: int, device, bf16: bool = False,
                        compile_: bool = False, warmup: int = 2) -> float:
    """Mean seconds per training step (AdamW, loss, backward, update) over ``steps`` steps after
    ``warmup`` untimed ones (compilation included there); ``batch_at(i)`` gives step i's batch on the
    device and is timed with the step (pass pre-collated batches to leave collation out). Resets the
    peak CUDA memory counter first."""
    import time

    import torch

    if compile_:
        denoiser.network = torch.compile(denoiser.network)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + warmup):
        sync(device)
        t0 = time.perf_counter()
        b = batch_at(i)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            loss = objective(denoiser, b.x0, b.cond, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def add_part_arguments(ap) -> None:
    """The options a domain benchmark with a speed part and a quality part takes."""
    ap.add_argument("--speed-only", action="store_true", help="only the speed part")
    ap.add_argument("--quality-only", action="store_true", help="only the quality part")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")


def bench_device(args):
    """The GPU when there is one, else the CPU (with ``--threads`` applied)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- sampling


def sample_overrides(values: list[str]) -> list[str]:
    """Dotted ``sample.KEY=VALUE`` overrides, as on the ``sciffusion sample`` command line (they mean
    what they mean there: they go through ``core.domain.resolve_config``); anything else is refused."""
    bad = [v for v in values if not v.startswith("sample.") or "=" not in v]
    if bad:
        raise SystemExit(f"not a sample.KEY=VALUE override: {', '.join(bad)}")
    return list(values)


def timed_generation(domain, denoiser, seeds: list[int], cfg: dict, data_config: dict, spec, device, batch: int,
                     decode: bool = False) -> tuple[float, int]:
    """Wall seconds of the one sampling path (``core.sampling.generate_batch``: template, constraint,
    prior, guidance, sampler) over ``seeds`` in batches of ``batch`` (and the domain's ``decode`` when
    asked), and the network calls one sample took, as the sampling path counted them."""
    import torch

    from sciffusion.core.sampling import generate_batch, guidance_null

    null = guidance_null(domain, cfg, data_config, spec)
    calls = 0
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(seeds), batch):
            made = generate_batch(domain, denoiser, seeds[i:i + batch], cfg, data_config, spec, device=device, null=null)
            calls = max(calls, made.network_calls)
            if decode:
                domain.decode(made.x0, made.cond, data_config)
    sync(device)
    return time.perf_counter() - t0, calls


def counted_calls(domain, process, seeds: list[int], cfg: dict, data_config: dict, spec) -> int:
    """Network calls one sample of ``spec`` takes, counted by the sampling path on a stand-in network
    of no cost (x0-hat = 0) with the model's ``process``: the count of a run too long to time whole."""
    import torch

    class Free(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.process = process

        def forward(self, x, t, cond=None):
            return x * 0.0

    return timed_generation(domain, Free(), seeds, cfg, data_config, spec, torch.device("cpu"), len(seeds))[1]
