"""Images benchmarks: the recipe study on the built-in digits, network speed, and FID against
network calls for each sampler. Each prints its table and appends it to bench/RESULTS.md.

    python bench/images.py study-train vp_v --steps 3000 --out runs/images_study   # one arm, one thread
    python bench/images.py study-report --out runs/images_study --samples 1000 --calls 5 10 20 50
    python bench/images.py study-curve --out runs/images_study --samples 1000 --calls 10     # FID over training
    python bench/images.py speed [--device cuda] [--seconds 5]                  # images/s, U-Net and DiT
    python bench/images.py calls images --samples 1000 --calls 5 10 20 50       # FID per sampler and call budget
                                                                                 # (heun: n steps are 2n - 1 calls)
    python bench/images.py sr runs/hubble_sr --samples 200 --calls 1 2 5 10       # SR PSNR/SSIM vs bicubic

The study's arms share the shipped digits network (domains/images/configs/digits.toml: U-Net 32
channels, mults [1, 2, 2], attention at 4x4 and below), the batch (64), AdamW at 5e-4 with 200
warm-up steps and no decay (so any checkpoint is the run of that budget), EMA 0.999 and seed 0, and
train the same number of steps: with the same network and batch a step costs the same in every arm,
so equal steps are equal compute (each arm's measured minutes are in the table too). Every arm is
scored on the same seeds at the same network-call budgets, each with its own process's sampler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common

CONFIG = Path(__file__).resolve().parents[1] / "domains" / "images" / "configs" / "digits.toml"
BASE = ["train.decay=none", "train.steps=1000000", "train.ckpt_every=500", "train.keep_last=0", "train.log_every=100",
        "train.seed=0"]
#: name -> (what it is, overrides over the digits config, the sampler that scores it)
ARMS = {
    "vp_v": ("VP cosine, v-prediction (DDPM-style)", ["process.name=vp_cosine", "objective.prediction=v"],
             ["sample.sampler=dpmpp_2m", "sample.grid=karras"]),
    "edm": ("EDM: Karras VE, x0 with EDM preconditioning, lognormal times, EDM weighting",
            ["process.name=karras_ve", "objective.prediction=x0", "objective.edm_preconditioning=true"],
            ["sample.sampler=dpmpp_2m", "sample.grid=karras"]),
    "rf_velocity": ("rectified flow, velocity (flow matching)", ["process.name=rectified_flow",
                                                                "objective.prediction=velocity"],
                    ["sample.sampler=euler", "sample.grid=uniform"]),
}


def study_train(arm: str, steps: int, out: Path) -> None:
    import torch

    from sciffusion import api

    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = api.train("images", CONFIG, out / arm, overrides=BASE + ARMS[arm][1] + [f"train.steps={steps}"],
                    progress=False)
    print(f"{arm}: step {res.step} in {(time.perf_counter() - t0) / 60:.1f} min -> {res.checkpoint}", flush=True)


def _minutes(run: Path) -> float:
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
    return max(float(r.get("elapsed", 0.0)) for r in lines) / 60.0


def steps_for(ckpt: Path, sampler: list[str], calls: int) -> int:
    """The most steps of ``sampler`` whose counted network calls stay within ``calls`` (counted by
    the sampling path on a stand-in network of no cost, with the model's process)."""
    from sciffusion.core.checkpoint import load_checkpoint
    from sciffusion.core.domain import resolve_config
    from sciffusion.core.process import process_from_config
    from sciffusion.core.sampling import SampleSpec
    from sciffusion.domains.images import ImagesDomain

    dom, c = ImagesDomain(), load_checkpoint(ckpt)
    best = 1
    for steps in range(1, calls + 1):
        cfg = resolve_config(dom, base=c.config, overrides=sampler + [f"sample.steps={steps}", "sample.guidance=0"])
        proc = process_from_config(cfg["process"])
        if common.counted_calls(dom, proc, [0], cfg, c.data_config, SampleSpec.from_config(cfg["sample"], proc)) > calls:
            break
        best = steps
    return best


def fid_row(ckpt: Path, sampler: list[str], calls: int, samples: int, work: Path) -> dict:
    """FID / precision / recall / accuracy of ``samples`` digits from ``ckpt`` at ``calls`` calls."""
    from sciffusion import api

    over = sampler + [f"sample.steps={steps_for(ckpt, sampler, calls)}"]
    folder = work / f"{ckpt.parent.parent.name}-{ckpt.name}-{'-'.join(o.split('=')[1] for o in sampler)}-{calls}-n{samples}"
    res = api.sample(str(ckpt), folder, n=samples, overrides=over, progress=False)
    seconds = res.seconds if res.generated else json.loads((folder / "run.json").read_text())["seconds"]
    m = api.evaluate("images", [folder], checkpoint=ckpt)
    calls = {json.loads(ln)["network_calls"] for ln in (folder / "manifest.jsonl").read_text().splitlines() if ln}
    return {"calls": calls.pop() if len(calls) == 1 else float("nan"), "fid": m["fid"], "precision": m["precision"], "recall": m["recall"],
            "accuracy": m.get("accuracy", float("nan")), "seconds": seconds}


def study_report(out: Path, samples: int, calls: list[int], argv: list[str]) -> None:
    import torch

    from sciffusion.core.checkpoint import latest_checkpoint

    rows = []
    for arm, (what, _, sampler) in ARMS.items():
        run = out / arm
        if not (run / "log.jsonl").is_file():
            print(f"{arm}: not trained, left out", flush=True)
            continue
        ckpt = latest_checkpoint(run)
        step = int(ckpt.name.split("-")[-1])
        for c in calls:
            r = fid_row(ckpt, sampler, c, samples, out / "samples")
            rows.append([arm, str(step), f"{_minutes(run):.1f}", sampler[0].split("=")[1], str(r["calls"]),
                         f"{r['fid']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{100 * r['accuracy']:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    text = common.table(["arm", "steps", "train min", "sampler", "calls", "FID", "precision", "recall", "accuracy %"],
                        rows)
    notes = "\n".join(f"- {arm}: {what}" for arm, (what, _, _) in ARMS.items())
    header = common.run_header("images.py", argv, torch.device("cpu"), [f"- samples per cell: {samples} (seeds 0..{samples - 1})",
                                                                "- FID etc. on the features of the digits classifier trained "
                                                                "here, against the 1,617 training digits"])
    print(text)
    common.append_results("images recipe study at equal compute", "\n".join(header) + "\n\n" + text + "\n\n" + notes)


#: the networks and image sizes the speed part times: (name, overrides, data overrides)
SPEED_CASES = [
    ("unet digits 1x8x8", ["model.network=unet"], []),
    ("dit digits 1x8x8", ["model.network=dit", "model.hidden=96", "model.depth=4", "model.patch=2"], []),
    ("unet 1x32x32 (cell patches)", ["model.network=unet", "model.channels=32", "model.attention_res=8"],
     ["data.builtin=cell", "data.patch=32", "data.patches_per_image=256", "data.labels=false"]),
    ("dit 1x32x32 (cell patches)", ["model.network=dit", "model.hidden=96", "model.depth=4", "model.patch=4"],
     ["data.builtin=cell", "data.patch=32", "data.patches_per_image=256", "data.labels=false"]),
]


def speed(device, seconds: float, batch: int, argv: list[str]) -> None:
    """Training images/s (AdamW steps on pre-collated batches) and sampling images/s (the one
    sampling path, 20 Euler calls, decoding included) for each network and size."""

    from sciffusion.core.domain import resolve_config
    from sciffusion.core.sampling import SampleSpec
    from sciffusion.domains.images import ImagesDomain

    dom = ImagesDomain()
    rows = []
    for name, model, data in SPEED_CASES:
        cfg = resolve_config(dom, CONFIG, model + data)
        train = dom.load_dataset(cfg["data"], "train")
        dc = dom.data_config(train, cfg)
        den = dom.build_denoiser(cfg, dc).to(device)
        params = sum(p.numel() for p in den.network.parameters())
        batches = [dom.collate(train[i * batch:(i + 1) * batch], dc).to(device) for i in range(4)]
        per_step = common.time_training_steps(den, dom.build_objective(cfg), lambda i: batches[i % 4], 5, device)
        steps = max(3, int(seconds / max(per_step, 1e-3)))
        per_step = common.time_training_steps(den, dom.build_objective(cfg), lambda i: batches[i % 4], steps, device)
        den.eval()
        spec = SampleSpec.from_config(cfg["sample"], den.process)
        n = max(batch, 256 if device.type == "cuda" else batch)
        wall, calls = common.timed_generation(dom, den, list(range(n)), cfg, dc, spec, device, n, decode=True)
        rows.append([name, f"{params:,}", str(batch), f"{batch / per_step:,.0f}", str(calls), str(n), f"{n / wall:,.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    text = common.table(["network, size", "parameters", "train batch", "train images/s", "calls", "sample batch",
                         "sampled images/s"], rows)
    print(text)
    common.append_results("images speed (bench/images.py speed)",
                          "\n".join(common.run_header("images.py", argv, device)) + "\n\n" + text)


#: the samplers of the calls part: name -> (overrides, calls per step)
SAMPLERS = {"euler": (["sample.sampler=euler"], 1), "heun": (["sample.sampler=heun"], 2),
            "dpmpp_2m": (["sample.sampler=dpmpp_2m"], 1), "ddim": (["sample.sampler=ddim"], 1)}


def calls_table(model: str, samples: int, calls: list[int], out: Path, argv: list[str]) -> None:
    """FID / precision / recall / accuracy of ``model`` for each sampler at each call budget."""
    import torch

    from sciffusion.core.checkpoint import load_checkpoint, resolve
    from sciffusion.core.registry import available, get_domain

    names = {d.name for d in available()}
    ckpt = load_checkpoint(get_domain(model).default_checkpoint() if model in names else resolve(model))
    rows = []
    for name, (over, _) in SAMPLERS.items():
        for c in calls:
            r = fid_row(Path(ckpt.path), over + ["sample.grid=uniform"], c, samples, out)
            rows.append([name, str(r["calls"]), f"{r['fid']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                         f"{100 * r['accuracy']:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    text = common.table(["sampler", "calls", "FID", "precision", "recall", "accuracy %"], rows)
    head = common.run_header("images.py", argv, torch.device("cpu"), [f"- model: {ckpt.path} (step {ckpt.step}, hash {ckpt.hash[:16]})",
                                                        f"- samples per cell: {samples}, uniform time grid"])
    print(text)
    common.append_results("images FID against network calls (bench/images.py calls)", "\n".join(head) + "\n\n" + text)


def study_curve(out: Path, samples: int, calls: int, argv: list[str]) -> None:
    """FID of every arm's checkpoints (every 500 steps) at one call budget: which recipe converges fastest."""
    import torch

    from sciffusion.core.checkpoint import list_checkpoints

    rows, arms = {}, [a for a in ARMS if (out / a / "log.jsonl").is_file()]
    for arm in arms:
        for step, ckpt in list_checkpoints(out / arm):
            rows.setdefault(step, {})[arm] = fid_row(ckpt, ARMS[arm][2], calls, samples, out / "samples")["fid"]
            print(f"{arm} step {step}: FID {rows[step][arm]:.2f}", flush=True)
    table = common.table(["step"] + [f"{a} FID" for a in arms],
                         [[str(s)] + [f"{rows[s].get(a, float('nan')):.2f}" for a in arms] for s in sorted(rows)])
    header = common.run_header("images.py", argv, torch.device("cpu"), [f"- samples per cell: {samples}, {calls} network "
                                                                        "calls, each arm with its own sampler"])
    print(table)
    common.append_results("images recipe study: FID over training", "\n".join(header) + "\n\n" + table)


def super_resolution(model: str, samples: int, calls: list[int], out: Path, argv: list[str]) -> None:
    """PSNR / SSIM of a super-resolution model on the held-out split of its data (full-size
    originals, downsampled by the engine), per call budget, beside bicubic upsampling of the same
    low-resolution input (SR3's baseline): ``scoring.super_resolution_scores``."""
    import torch

    from sciffusion.core.checkpoint import load_checkpoint, resolve
    from sciffusion.domains.images.scoring import super_resolution_scores

    ckpt = load_checkpoint(resolve(model))
    got, n = super_resolution_scores(ckpt.path, samples, calls, out)
    rows = [[r["method"], str(r["calls"]), f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
             "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"] for r in got]
    text = common.table(["method", "network calls", "PSNR dB", "SSIM", "images/s"], rows)
    head = common.run_header("images.py", argv, torch.device("cpu"), [
        f"- model: {ckpt.path} (step {ckpt.step}, hash {ckpt.hash[:16]}); {n} held-out "
        f"{ckpt.data_config['height']}x{ckpt.data_config['width']} patches ({ckpt.config['data']['builtin']}), "
        f"box-downsampled x{ckpt.data_config['sr_factor']}; PSNR/SSIM against the 8-bit originals, images in [-1, 1]"])
    print(text)
    common.append_results("images super-resolution (bench/images.py sr)", "\n".join(head) + "\n\n" + text)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("study-train")
    t.add_argument("arm")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--out", type=Path, default=Path("runs/images_study"))
    r = sub.add_parser("study-report")
    r.add_argument("--out", type=Path, default=Path("runs/images_study"))
    r.add_argument("--samples", type=int, default=1000)
    r.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20, 50])
    cu = sub.add_parser("study-curve")
    cu.add_argument("--out", type=Path, default=Path("runs/images_study"))
    cu.add_argument("--samples", type=int, default=1000)
    cu.add_argument("--calls", type=int, default=10)
    sp = sub.add_parser("speed")
    sp.add_argument("--device", default=None)
    sp.add_argument("--seconds", type=float, default=5.0, help="timed training seconds per case")
    sp.add_argument("--batch", type=int, default=64)
    cl = sub.add_parser("calls")
    cl.add_argument("model", help="a checkpoint or a domain name (images: the shipped digits model)")
    cl.add_argument("--samples", type=int, default=1000)
    cl.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20, 50])
    cl.add_argument("--out", type=Path, default=Path("runs/images_calls"))
    sr = sub.add_parser("sr")
    sr.add_argument("model", help="a super-resolution checkpoint (model.sr_factor > 0)")
    sr.add_argument("--samples", type=int, default=200)
    sr.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20])
    sr.add_argument("--out", type=Path, default=Path("runs/images_sr"))
    a = ap.parse_args(argv)
    common.import_package()
    if a.cmd == "study-train":
        study_train(a.arm, a.steps, a.out)
    elif a.cmd == "study-report":
        study_report(a.out, a.samples, a.calls, argv)
    elif a.cmd == "study-curve":
        study_curve(a.out, a.samples, a.calls, argv)
    elif a.cmd == "speed":
        import torch

        speed(torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu")), a.seconds, a.batch, argv)
    elif a.cmd == "calls":
        calls_table(a.model, a.samples, a.calls, a.out, argv)
    elif a.cmd == "sr":
        super_resolution(a.model, a.samples, a.calls, a.out, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
