"""``ImagesDomain.metrics``: what ``sciffusion evaluate images`` reports.

Always: ``n``, ``mean`` and ``std`` of the pixel values (in [0, 1]).
Against held-out originals, for samples whose metadata names one (inpainting, and super-resolution
of full-size originals): ``psnr`` and ``ssim`` (Wang et al. 2004) over the ``paired`` samples, the
originals read in the model's units; ``originals_missing`` counts samples whose original is gone or
has changed since (its sha256 is recorded).
Against the training data (the checkpoint's ``[data]`` table; scikit-learn's digits when no
checkpoint is given), when the samples have its shape: ``fid``, ``precision``, ``recall``
(Kynkaanniemi et al. 2019, k = 3) on the features of a classifier trained here on that data's
training split (cached), and with a label classifier ``is`` and, for samples that carry their
label, ``accuracy``. ``classifier`` is 1 when these were computed, else 0.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...core.features import asked_labels
from ...core.io import InputError, cache_dir

__all__ = ["score", "reference_set", "evaluation_classifier", "super_resolution_scores", "CLASSIFIER_STEPS"]

CLASSIFIER_STEPS = 1000  # training steps of the evaluation classifier (digits: about 7 s on one thread)


def _stack(objects: Sequence[dict]) -> torch.Tensor:
    """The samples as one (N, C, H, W) tensor in [-1, 1]; all must have one shape."""
    first = objects[0]["image"].shape
    for o in objects:
        if o["image"].shape != first:
            raise InputError(f"{o.get('file', 'a sample')}: shape {tuple(o['image'].shape)}, the first sample's is "
                             f"{tuple(first)}; evaluate images of one size at a time")
    return torch.from_numpy(np.stack([np.asarray(o["image"], dtype=np.float32) for o in objects])) * 2.0 - 1.0


def _original_of(o: dict) -> Path | None:
    """The original a sample's metadata names, when it exists unchanged (its recorded sha256)."""
    from ...core.io import sha256_file

    if not o.get("original"):
        return None
    path = Path(o["original"])
    if not path.is_absolute() and o.get("file"):
        path = Path(o["file"]).parent / path
    if not path.is_file() or (o.get("original_sha256") and sha256_file(path) != o["original_sha256"]):
        return None
    return path


def _paired(objects: Sequence[dict], data_config: dict) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(samples, originals) in [-1, 1] for the samples whose metadata names an original, read in the
    model's units (``edits.model_space``), and how many named an original that is missing or changed."""
    from .edits import model_space

    gen, ref, lost = [], [], 0
    for o in objects:
        if not o.get("original"):
            continue
        path = _original_of(o)
        if path is None:
            lost += 1
            continue
        C = o["image"].shape[0]
        dc = {"channels": C, "range": o.get("range") or [0.0, 1.0], "bit_depth": 0 if o.get("range") else 8,
              **{k: data_config[k] for k in ("channels", "range", "bit_depth") if k in data_config}}
        x = model_space(path, dc)
        if tuple(x.shape) != tuple(o["image"].shape):
            raise InputError(f"{o.get('file', 'a sample')}: shape {tuple(o['image'].shape)}, its original {path} is "
                             f"{tuple(x.shape)}")
        gen.append(torch.from_numpy(np.asarray(o["image"], dtype=np.float32)) * 2 - 1)
        ref.append(x)
    if not gen and not lost:
        return None
    return (torch.stack(gen) if gen else None), (torch.stack(ref) if ref else None), lost


def _data_table(data_config: dict) -> dict:
    from .tables import ImagesData

    return {**ImagesData.defaults(), **(data_config.get("data") or {})}


def reference_set(data_config: dict) -> tuple[torch.Tensor, list[str | None], dict]:
    """The training split the samples are compared with, in [-1, 1], its labels and its data table."""
    from .dataset import load_examples
    from .units import to_model

    table = _data_table(data_config)
    examples = load_examples(table, "train")
    x = torch.from_numpy(np.stack([e["image"] for e in examples]).astype(np.float32))
    return to_model(x, data_config or {"range": [0.0, 1.0]}), [e.get("label") for e in examples], table


def _fingerprint(table: dict) -> dict:
    """What identifies a data table's images: the table, and for a folder every file's size and time."""
    out = {k: v for k, v in table.items() if k != "skip_bad"}
    if table.get("path"):
        root = Path(table["path"]).expanduser()
        out["files"] = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                        for f in sorted(root.rglob("*")) if f.is_file()]
    return out


def _cache_folder(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir("images", f"classifier-{digest}")


def evaluation_classifier(ref: torch.Tensor, labels: Sequence[str | None], table: dict):
    """The classifier of a training split (its labels when it has two or more, else the rotation
    task), trained once and cached under $SCIFFUSION_CACHE (default ~/.cache/sciffusion)."""
    from .classifier import load_classifier, train_classifier

    names = sorted({lab for lab in labels if lab is not None})
    folder = _cache_folder({"data": _fingerprint(table), "steps": CLASSIFIER_STEPS, "shape": list(ref.shape[1:]),
                            "labels": names})
    if (folder / "classifier.json").is_file():
        try:
            return load_classifier(folder)
        except InputError:
            pass  # a damaged cache entry is trained again
    y = None
    if len(names) > 1 and all(lab is not None for lab in labels):
        index = {n: i for i, n in enumerate(names)}
        y = torch.tensor([index[lab] for lab in labels], dtype=torch.long)
    clf = train_classifier(ref, y, steps=CLASSIFIER_STEPS, seed=0, label_names=names if y is not None else None)
    try:
        clf.save(folder)
    except OSError:
        pass
    return clf


def score(objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
    """The metrics above (``reference``: objects to compare with instead of the training data)."""
    from .metrics import evaluate_images, psnr, ssim

    if not objects:
        raise InputError("no images to evaluate")
    gen = _stack(objects)
    out: dict = {"n": len(objects), "mean": float((gen.mean() + 1) / 2), "std": float(gen.std() / 2),
                 "classifier": 0.0}
    pairs = _paired(objects, data_config)
    if pairs is not None:
        gen_p, ref_p, lost = pairs
        out.update(paired=0 if gen_p is None else len(gen_p), originals_missing=lost)
        if gen_p is not None:
            out.update(psnr=float(psnr(ref_p, gen_p)), ssim=float(ssim(ref_p, gen_p)))
    if reference is not None:
        ref = _stack(reference)
        labels = [r.get("label_name") for r in reference]
        table = {"reference": hashlib.sha256(ref.numpy().tobytes()).hexdigest(), "labels": labels}
    else:
        ref, labels, table = reference_set(data_config)
    judge = _judge(gen, ref, labels, table)
    if judge is None:
        return out
    clf, names = judge
    gen_labels = asked_labels([o.get("label_name") for o in objects], names)
    ref_labels = torch.tensor([names.index(lab) for lab in labels]) if names else None
    res = evaluate_images(clf, gen, ref, gen_labels=gen_labels, ref_labels=ref_labels)
    out.update({k: float(v) for k, v in res.items() if k != "n"})
    out["classifier"] = 1.0
    return out


def _judge(gen: torch.Tensor, ref: torch.Tensor, labels: Sequence[str | None], table: dict):
    """The evaluation classifier of the reference images and its label names ([] for the rotation
    task); None when the images cannot be judged against them (another shape, or fewer than two)."""
    if tuple(ref.shape[1:]) != tuple(gen.shape[1:]) or len(gen) < 2:
        return None
    clf = evaluation_classifier(ref, labels, table)
    return clf, (list(clf.label_names or []) if clf.kind == "labels" else [])


def class_confusion(objects: Sequence[dict], reference: tuple) -> tuple[np.ndarray, list[str]] | None:
    """The confusion matrix (rows: the label asked, columns: the label the evaluation classifier of
    ``score`` gives) and the label names, against ``reference`` (what ``reference_set`` gives); None
    when the images are unlabelled or the model has no label classifier."""
    from ...core.features import confusion_matrix

    gen = _stack(objects)
    judge = _judge(gen, *reference)
    asked = None if judge is None else asked_labels([o.get("label_name") for o in objects], judge[1])
    if asked is None:
        return None
    clf, names = judge
    return confusion_matrix(asked.numpy(), clf.predict(gen).numpy(), len(names)), names


def intensity_picture(objects: Sequence[dict], reference: torch.Tensor | None, path: Path) -> Path:
    """Histograms of pixel values (0..1) of the samples and of the training images ``reference``
    (None: not found), per channel."""
    from ...core.pictures import figure, save_figure

    gen = (_stack(objects) + 1) / 2
    ref = None if reference is None else (reference + 1) / 2
    channels = int(gen.shape[1])
    with figure(1, channels, width=4.0 * channels, height=3.0) as (fig, axes):
        for c, ax in enumerate(axes[0]):
            bins = torch.linspace(0, 1, 33).numpy()
            ax.hist(gen[:, c].flatten().numpy(), bins=bins, density=True, alpha=0.6, label=f"samples ({len(gen)})")
            if ref is not None and ref.shape[1] == channels:
                ax.hist(ref[:, c].flatten().numpy(), bins=bins, density=True, histtype="step", linewidth=1.5,
                        color="k", label=f"training images ({len(ref)})")
            ax.set_yscale("log")
            ax.set_xlabel("pixel value" + (f" (channel {c})" if channels > 1 else ""))
            ax.set_ylabel("density")
            ax.legend(fontsize=8)
        fig.suptitle("pixel values" + ("" if ref is not None else " (no training images found to compare)"))
        return save_figure(fig, path)


def super_resolution_scores(model: Path, samples: int, calls: Sequence[int], work: Path) -> tuple[list[dict], int]:
    """PSNR / SSIM of a super-resolution model on the first ``samples`` images of its data's held-out
    split, written as 8-bit originals that the model downsamples itself, at each of ``calls`` Euler
    steps, after a first row for bicubic upsampling of the same input (SR3's baseline); and the
    count of images. Rows: method, calls, psnr, ssim, images_per_s (None for bicubic)."""
    from ...core.checkpoint import load_checkpoint, resolve
    from ...core.generate import sample
    from ...core.registry import get_domain
    from .dataset import load_examples
    from .edits import degrade
    from .metrics import psnr, ssim
    from .output import write_png

    ckpt = load_checkpoint(resolve(model))
    f = int(ckpt.data_config.get("sr_factor", 0))
    if not f:
        raise InputError(f"{ckpt.path}: not a super-resolution model (model.sr_factor = 0)")
    test = load_examples(ckpt.config["data"], "test")[:samples]
    originals = work / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    for i, e in enumerate(test):
        write_png(originals / f"{i:05d}.png", e["image"], 8)
    ref = torch.round(torch.stack([torch.from_numpy(e["image"]) for e in test]) * 255) / 127.5 - 1  # the 8-bit files
    bicubic = degrade(ref, f)
    rows = [{"method": "bicubic", "calls": 0, "psnr": psnr(ref, bicubic), "ssim": ssim(ref, bicubic), "images_per_s": None}]
    for c in calls:
        folder = work / f"{ckpt.hash[:12]}-euler-{c}-n{len(test)}"
        res = sample(str(ckpt.path), folder, seeds=f"0-{len(test) - 1}", progress=False,
                     overrides=[f"sample.lowres={originals}", f"sample.steps={c}", "sample.sampler=euler"])
        dom = get_domain("images")
        m = score([dom.read(f) for f in sorted(folder.glob("0*.png"))], ckpt.data_config)
        seconds = res.seconds if res.generated else json.loads((folder / "run.json").read_text())["seconds"]
        rows.append({"method": f"SR3 x{f} (euler)", "calls": c, "psnr": m["psnr"], "ssim": m["ssim"],
                     "images_per_s": len(test) / seconds})
    return rows, len(test)
