"""The molecules recipe study, at equal compute: today's EDM recipe, each change alone, and all
together, each trained for the same wall-clock budget with the same network, then scored on the
same samples at the same network-call budgets (counted).

    python bench/recipes.py train edm --minutes 50 --out runs/study      # one arm (one process, one thread)
    python bench/recipes.py evaluate --out runs/study --samples 1000 --calls 10 20 50
    python bench/recipes.py curve --out runs/study --arms all edm --samples 300 --calls 20
    python bench/recipes.py report --out runs/study                       # the table into RESULTS.md

Arms share the network (EGNN, 96 hidden, 5 layers), the batch (64), AdamW at lr 1e-3 with 300
warm-up steps and no decay (so a run cut by the time budget is the run of that budget), EMA
0.999, adaptive clipping, seed 0. Each arm is a list of config overrides; `arms` prints them.
The call budgets are met exactly: EDM's polynomial schedule has sigma(0) > 0, so its n-call
sampler is n - 1 DDPM steps and the final denoising call; rectified flow ends at sigma = 0, so
n Euler steps are n calls. Every count in the table is the one the sampler measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common

BASE = ["model.network=egnn", "model.hidden=96", "model.layers=5", "train.batch_size=64", "train.lr=1e-3",
        "train.warmup_steps=300", "train.decay=none", "train.ema_decay=0.999", "train.adaptive_clip=true",
        "train.bf16=false", "train.seed=0", "train.steps=1000000", "train.log_every=100", "train.ckpt_every=1000",
        "train.keep_last=0"]
EDM = ["process.name=polynomial", "objective.prediction=eps", "objective.weighting=uniform",
       "objective.time_sampler=discrete", "sample.sampler=ddpm", "sample.grid=discrete"]
FM = ["process.name=rectified_flow", "objective.prediction=x0",
      "objective.weighting=uniform", "objective.time_sampler=beta", "objective.time_params=[1.0, 2.0]",
      "data.align=ot", "sample.sampler=euler", "sample.grid=karras"]
CATEGORICAL = ["data.atom_types=categorical"]
SELF_COND = ["objective.self_conditioning=0.5"]

#: name -> (what changes, overrides over BASE)
ARMS = {
    "edm": ("today's EDM recipe (VP polynomial, eps, continuous one-hot types, discrete times)", EDM),
    "edm+categorical": ("EDM with categorical (masked) atom types", EDM + CATEGORICAL),
    "edm+selfcond": ("EDM with self-conditioning (p = 0.5)", EDM + SELF_COND),
    "fm": ("flow matching: rectified flow, x0-prediction, OT-aligned noise, t ~ Beta(1, 2)", FM),
    "fm-ot": ("flow matching without the alignment", [o for o in FM if o != "data.align=ot"]),
    "all": ("all together: flow matching + categorical types + self-conditioning", FM + CATEGORICAL + SELF_COND),
    "fm+minsnr": ("flow matching with min-SNR-5 weighting of the x0 loss", FM + ["objective.weighting=min_snr"]),
    "fm+velocity": ("flow matching with the velocity (flow-matching) loss", [o for o in FM if "prediction" not in o]
                    + ["objective.prediction=velocity"]),
}


def overrides(arm: str) -> list[str]:
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    return BASE + ARMS[arm][1]


def sampler_for_calls(cfg: dict, calls: int) -> list[str]:
    """Sample overrides that cost exactly ``calls`` network evaluations for this arm's process:
    EDM's DDPM on its discrete grid (its sweep's choice), Euler on the karras grid for rectified
    flow (better than a uniform grid at 20 and 50 calls on the "all" arm: 76.7/2.3 against
    75.5/0.7 and 81.1/5.0 against 78.8/2.5 % atom/molecule stability)."""
    if cfg["process"]["name"] == "polynomial":
        return [f"sample.steps={calls - 1}"]
    return [f"sample.steps={calls}", "sample.sampler=euler", "sample.grid=karras"]


def train_arm(arm: str, minutes: float, out: Path) -> None:
    import torch

    from sciffusion import api

    torch.set_num_threads(1)
    run = out / arm
    over = overrides(arm) + [f"train.max_minutes={minutes}"]
    t0 = time.perf_counter()
    res = api.train("molecules", None, run, overrides=over, progress=False)
    print(f"{arm}: step {res.step} in {(time.perf_counter() - t0) / 60:.1f} min -> {res.checkpoint}", flush=True)


def checkpoints(run: Path) -> list[tuple[int, float, Path]]:
    """(step, training minutes at that step, folder) of a run's checkpoints."""
    from sciffusion.core.checkpoint import list_checkpoints
    from sciffusion.core.train import read_log

    minutes = training_minutes(read_log(run))
    out = []
    for step, path in list_checkpoints(run):
        known = [s for s in minutes if s <= step]
        out.append((step, minutes[max(known)] if known else 0.0, path))
    return out


def training_minutes(records: list[dict]) -> dict[int, float]:
    """Training minutes at each logged step, summed over the run's sessions (each session's
    ``elapsed`` starts at 0 after a resume; the time a stopped session spent past its last
    checkpoint counts, as compute spent)."""
    offset, last, out = 0.0, 0.0, {}
    for r in records:
        if r.get("event") == "resume":
            offset, last = offset + last, 0.0
        elif "elapsed" in r:
            last = float(r["elapsed"])
            out[int(r["step"])] = (offset + last) / 60.0
    return out


def score(ckpt: Path, calls: int, samples: int, work: Path) -> dict:
    """EDM metrics of ``samples`` molecules from ``ckpt`` at ``calls`` network calls."""
    from sciffusion import api
    from sciffusion.core.checkpoint import load_checkpoint

    cfg = load_checkpoint(ckpt, verify=False).config
    over = sampler_for_calls(cfg, calls)
    folder = work / f"{ckpt.parent.parent.name}-{ckpt.name}-calls{calls}-n{samples}-{over[-1].split('=')[1]}"
    t0 = time.perf_counter()
    res = api.sample(str(ckpt), folder, n=samples, batch_size=250, overrides=over, progress=False)
    seconds = time.perf_counter() - t0
    m = api.evaluate("molecules", [folder])
    return {"calls": res.network_calls, "samples": samples, "atom": m["atom_stability"],
            "molecule": m["molecule_stability"], "valid": m["validity"], "vxu": m["valid_and_unique"],
            "seconds": round(seconds, 1)}


def evaluate(out: Path, arms: list[str], calls: list[int], samples: int, minutes: float | None) -> None:
    """Score each arm's checkpoint at the budget (the last one within ``minutes`` of training)."""
    results = _read(out)
    for arm in arms:
        ckpts = [c for c in checkpoints(out / arm) if minutes is None or c[1] <= minutes + 0.5]
        if not ckpts:
            print(f"{arm}: no checkpoint yet", flush=True)
            continue
        step, mins, path = ckpts[-1]
        for n in calls:
            r = score(path, n, samples, out / "samples")
            r.update(arm=arm, step=step, minutes=round(mins, 1))
            results["final"] = [x for x in results.get("final", []) if (x["arm"], x["calls"]) != (arm, r["calls"])] + [r]
            print(json.dumps(r), flush=True)
            _write(out, results)


def curve(out: Path, arms: list[str], calls: int, samples: int) -> None:
    results = _read(out)
    for arm in arms:
        for step, mins, path in checkpoints(out / arm):
            r = score(path, calls, samples, out / "samples")
            r.update(arm=arm, step=step, minutes=round(mins, 1))
            results.setdefault("curve", []).append(r)
            print(json.dumps(r), flush=True)
            _write(out, results)


def standard_error(percent: float, n: int) -> float:
    """Binomial standard error, in percentage points, of a rate of ``percent`` % over ``n`` samples."""
    p = percent / 100.0
    return 100.0 * (p * (1.0 - p) / n) ** 0.5


def _read(out: Path) -> dict:
    f = out / "results.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _write(out: Path, results: dict) -> None:
    from sciffusion.core.io import atomic_write_json

    atomic_write_json(out / "results.json", results)


def report(out: Path, argv: list[str]) -> None:
    """The equal-compute table (and the curve) into bench/RESULTS.md."""
    import torch

    results = _read(out)
    final = results.get("final", [])
    rows = [[r["arm"], ARMS[r["arm"]][0], f"{r['minutes']:.0f}", str(r["step"]), str(r["calls"]), str(r["samples"]),
             f"{r['atom']:.1f}", f"{r['molecule']:.1f} ± {standard_error(r['molecule'], r['samples']):.1f}",
             f"{r['valid']:.1f} ± {standard_error(r['valid'], r['samples']):.1f}", f"{r['vxu']:.1f}"]
            for r in final]
    scored = {r["arm"] for r in final}
    trained = {arm: checkpoints(out / arm) for arm in ARMS if final and arm not in scored and (out / arm).is_dir()}
    unscored = [f"{arm} ({ckpts[-1][0]} steps)" for arm, ckpts in trained.items() if ckpts]
    text = []
    if final:
        text = ["Equal compute: every arm trained for the same wall-clock budget on one CPU process (one "
                "thread), same EGNN 96x5, batch 64, lr 1e-3 (300 warm-up steps, no decay), EMA 0.999; "
                "scored on the same seeds at the same counted network calls. ± is the binomial standard error "
                "sqrt(p (1 - p) / n) of a percentage over n samples.", "",
                common.table(["arm", "recipe", "train min", "step", "calls", "samples", "atom stab.", "mol. stab.",
                              "valid", "V x U"], rows)]
    if unscored:
        text += ["", "Trained but not scored: " + ", ".join(unscored) + "."]
    if results.get("curve"):
        crow = [[r["arm"], f"{r['minutes']:.1f}", str(r["step"]), str(r["calls"]), str(r["samples"]),
                 f"{r['atom']:.1f}", f"{r['molecule']:.1f} ± {standard_error(r['molecule'], r['samples']):.1f}",
                 f"{r['valid']:.1f}"] for r in results["curve"]]
        text += ["", "Molecule stability against training minutes (wall-clock minutes of the run's own processes, "
                 "from its log):", "",
                 common.table(["arm", "train min", "step", "calls", "samples", "atom stab.", "mol. stab.", "valid"],
                              crow)]
    header = common.run_header("recipes.py", argv, torch.device("cpu"))
    title = "Molecules: recipe study at equal compute" if final else f"Molecules: training curve of {out}"
    path = common.append_results(title, "\n".join(header + [""] + text))
    print("\n".join(text))
    print(f"appended to {path}")


def main(argv: list[str]) -> None:
    common.import_package()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("arms", help="print the arms and their overrides")
    t = sub.add_parser("train", help="train one arm for a wall-clock budget")
    t.add_argument("arm")
    t.add_argument("--minutes", type=float, default=50.0)
    t.add_argument("--out", type=Path, default=Path("runs/study"))
    for name in ("evaluate", "curve"):
        e = sub.add_parser(name)
        e.add_argument("--out", type=Path, default=Path("runs/study"))
        e.add_argument("--arms", nargs="+", default=list(ARMS))
        e.add_argument("--samples", type=int, default=1000)
        e.add_argument("--calls", type=int, nargs="+", default=[10, 20, 50])
        if name == "evaluate":
            e.add_argument("--minutes", type=float, default=None, help="score the checkpoint within this budget")
    r = sub.add_parser("report")
    r.add_argument("--out", type=Path, default=Path("runs/study"))
    a = p.parse_args(argv)
    if a.cmd == "arms":
        for name, (what, over) in ARMS.items():
            print(f"{name}: {what}\n    {' '.join(BASE + over)}")
    elif a.cmd == "train":
        train_arm(a.arm, a.minutes, a.out)
    elif a.cmd == "evaluate":
        evaluate(a.out, a.arms, a.calls, a.samples, a.minutes)
    elif a.cmd == "curve":
        curve(a.out, a.arms, a.calls[0], a.samples)
    else:
        report(a.out, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
