"""Pictures the engine draws (matplotlib, headless), and the one way every picture is saved.

    with figure(2, 1, width=8) as (fig, axes):   # a Figure and its axes (2D), drawn without pyplot
        ...
        save_figure(fig, "run/loss.png")          # atomically, PNG

    training_pictures(run)   # loss.png and, when the log has them, sample_metrics.png

The training pictures read only the run's ``log.jsonl`` (``core.run_folder.read_log``), so they can be
drawn again at any time from a finished or a killed run:

- ``loss.png``: the training loss per log line (mean over its steps), the validation losses of the
  model and of its EMA, and, where the objective has several fields, the validation loss of each
  field ("val_loss/<field>") in a panel of its own; the learning rate on a second axis beside it.
- ``sample_metrics.png``: one panel per training-time sample metric ("sample/<name>") over steps.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .io import atomic_path, atomic_write_bytes

LOSS_PICTURE = "loss.png"
SAMPLE_METRICS_PICTURE = "sample_metrics.png"
DPI = 100


@contextlib.contextmanager
def figure(rows: int = 1, cols: int = 1, *, width: float = 8.0, height: float = 3.0, **kw) -> Iterator:
    """A matplotlib Figure of ``rows`` x ``cols`` panels (``height`` inches each row) and its axes
    array (always 2D). It is drawn without pyplot (Agg, headless), so it never touches the caller's
    figures or backend (a notebook's, say)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows))
    yield fig, fig.subplots(rows, cols, squeeze=False, **kw)


def grid_shape(n: int, columns: int) -> tuple[int, int]:
    """(rows, columns) of a row-major grid of ``n`` panels, at most ``columns`` wide."""
    cols = max(1, min(columns, n))
    return math.ceil(n / cols), cols


def save_figure(fig, path: "str | Path | io.BytesIO", dpi: int = DPI) -> "Path | io.BytesIO":
    """Write ``fig`` as PNG to ``path``, atomically (a reader sees the old picture or the new one), or
    into a ``BytesIO`` (a picture that lives only in a page)."""
    fig.tight_layout()
    if isinstance(path, io.BytesIO):
        fig.savefig(path, format="png", dpi=dpi)
        return path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


# ----------------------------------------------------------------------------- training


def series(records: Sequence[Mapping], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the log records that hold a finite number for it."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(r.get("step", 0)))
            values.append(float(v))
    return steps, values


def _keys(records: Sequence[Mapping], prefix: str) -> list[str]:
    return sorted({k for r in records for k in r if k.startswith(prefix)})


def _positive(values: Sequence[float]) -> bool:
    return bool(values) and min(values) > 0


def _plot_series(ax, records: Sequence[Mapping], keys: Sequence[str], label, ylabel: str, title: str) -> None:
    """One panel: the series of ``keys`` over steps (dots while there are few points), named by
    ``label(key)``, on a log scale when every value is positive."""
    for k in keys:
        s, v = series(records, k)
        ax.plot(s, v, marker="." if len(s) < 30 else None, label=label(k))
    if all(_positive(series(records, k)[1]) for k in keys):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def loss_picture(records: Sequence[Mapping], path: "str | Path | io.BytesIO", title: str = ""):
    """``loss.png`` from the log records; None when the log has no loss yet."""
    main = [k for k in ("loss", "val_loss", "val_loss_ema") if series(records, k)[0]]
    fields = [k for k in _keys(records, "val_loss/") if series(records, k)[0]]
    if not main:
        return None
    rows = 2 if len(fields) > 1 else 1
    with figure(rows, 1, width=8, height=3.2) as (fig, axes):
        ax = axes[0][0]
        _plot_series(ax, records, main, lambda k: k.replace("_", " "), "loss", title or "training loss")
        lr_steps, lr = series(records, "lr")
        handles, labels = ax.get_legend_handles_labels()
        if lr_steps:
            ax2 = ax.twinx()
            line, = ax2.plot(lr_steps, lr, color="0.55", linestyle="--", linewidth=1)
            ax2.set_ylabel("learning rate")
            handles, labels = handles + [line], labels + ["learning rate"]
        ax.legend(handles, labels, loc="upper right", fontsize=8)
        if rows == 2:
            ax = axes[1][0]
            _plot_series(ax, records, fields, lambda k: k.split("/", 1)[1], "validation loss", "validation loss per field")
            ax.legend(loc="upper right", fontsize=8)
        return save_figure(fig, path)


def sample_metrics_picture(records: Sequence[Mapping], path: "str | Path | io.BytesIO", title: str = ""):
    """``sample_metrics.png``: a panel per "sample/<metric>" over steps; None when there are none."""
    keys = [k for k in _keys(records, "sample/") if k != "sample/network_calls" and series(records, k)[0]]
    if not keys:
        return None
    rows, cols = grid_shape(len(keys), 3)
    with figure(rows, cols, width=4.0 * cols, height=2.8) as (fig, axes):
        for i, ax in enumerate(axes.flat):
            if i >= len(keys):
                ax.set_visible(False)
                continue
            s, v = series(records, keys[i])
            ax.plot(s, v, marker="o", markersize=3)
            ax.set_title(keys[i].split("/", 1)[1], fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)


def training_pictures(run: str | Path, title: str = "") -> list[Path]:
    """Draw ``loss.png`` and ``sample_metrics.png`` of a run folder from its log (atomically); the
    paths drawn."""
    from .run_folder import read_log

    run = Path(run)
    drawn = []
    for name, data in training_picture_bytes(read_log(run), title).items():
        atomic_write_bytes(run / name, data)
        drawn.append(run / name)
    return drawn


def training_picture_bytes(records: Sequence[Mapping], title: str = "") -> dict[str, bytes]:
    """The training pictures of ``records`` as PNG bytes by file name, written nowhere (a report of
    a run folder leaves the folder as it is)."""
    out = {}
    for name, draw in ((LOSS_PICTURE, loss_picture), (SAMPLE_METRICS_PICTURE, sample_metrics_picture)):
        buf = draw(records, io.BytesIO(), title)
        if buf is not None:
            out[name] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------- evaluation


def class_accuracy_picture(path: str | Path, confusion, names: Sequence[str], title: str = "",
                           item: str = "sample") -> Path:
    """Bars of a classifier's accuracy per asked label (the number of ``item``s asked under each name;
    the overall accuracy as a dashed line) beside the confusion matrix ``confusion`` (rows asked,
    columns the label the classifier gave)."""
    import numpy as np

    confusion = np.asarray(confusion, dtype=np.int64)
    counts, correct = confusion.sum(axis=1), np.diag(confusion)
    accuracy = np.divide(correct, counts, out=np.zeros(len(counts)), where=counts > 0)
    overall = float(correct.sum() / max(int(counts.sum()), 1))
    x = np.arange(len(names))
    from matplotlib.ticker import MaxNLocator

    with figure(1, 2, width=13.0, height=4.8, gridspec_kw={"width_ratios": [1.3, 1.0]}) as (fig, axes):
        ax = axes[0][0]
        ax.bar(x, accuracy, color="tab:blue")
        for i in np.flatnonzero(counts):
            ax.text(i, accuracy[i] + 0.02, f"{correct[i]}/{counts[i]}", ha="center", fontsize=8)
        ax.axhline(overall, color="0.3", linestyle="--", linewidth=1, label=f"overall {overall:.1%}")
        ax.set_xticks(x, [f"{n}\n({c} {item}{'' if c == 1 else 's'})" for n, c in zip(names, counts)], fontsize=8)
        ax.set_ylim(0, 1.25)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_xlabel("asked label")
        ax.set_ylabel("classifier accuracy")
        ax.set_title(f"accuracy per asked label, {int(counts.sum())} {item}s, overall {overall:.1%}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax = axes[0][1]
        im = ax.imshow(confusion, cmap="Blues", vmin=0)
        for (r, c), v in np.ndenumerate(confusion):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 * confusion.max() else "black")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_yticks(x, names, fontsize=8)
        ax.set_xlabel("label given by the classifier")
        ax.set_ylabel("asked label")
        ax.set_title(f"confusion matrix ({item}s)", fontsize=10)
        fig.colorbar(im, ax=ax, label=f"{item}s").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)
