"""``sciffusion report PATH...``: one self-contained HTML page of samples folders and training runs.

    report(["samples/molecules", "runs/qm9"], out="qm9.html")

Nothing is fetched when the page is viewed: the styles, the molecule viewer (``report_viewer.js``,
written here, no library), every picture (PNG) and every clip (WAV) are inside the file as data URIs,
so it can be mailed, archived or opened offline.

What a section shows
- a samples folder (``sciffusion sample``): its provenance (checkpoint and its hash, seeds, sampler,
  time grid, guidance, network calls per sample, device, timings) from ``run.json`` and the
  manifest; the metrics ``sciffusion evaluate`` kept (``evaluation/metrics.json``) and its pictures;
  the run picture (``grid.png``); the first samples as the domain shows them
  (``Domain.report_item``: a picture, a player with its picture, or an interactive 3D structure);
  the checkpoint's model card; the resolved config.
- a training run folder (``sciffusion train``): the training pictures, drawn again from the log
  (``core.pictures``, into the page only), the last logged values, the run's events, its
  checkpoints, its model card when it has one, and its config.

The report only reads the folders. A sample the domain cannot show (a missing or damaged file, a
non-finite coordinate) is a note in its place, not the end of the page; files are only ever read
from inside the folder that names them.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .checkpoint import list_checkpoints
from .config import dump_toml
from .evaluation import read_evaluation, samples_checkpoint
from .io import InputError, atomic_write_text
from .pictures import training_picture_bytes
from .registry import get_domain
from .run_folder import read_log
from .sample_folder import EVALUATION, REPORT, RUN, inside, read_samples
from .version import __version__

ITEM_KINDS = ("image", "audio", "molecule")
MAX_ITEMS = 24
CARD = "MODEL_CARD.md"
_VIEWER = Path(__file__).with_name("report_viewer.js")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.5rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pictures img { max-width: 100%; border: 1px solid #eee; margin: 0.3rem 0; }
.items { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 0.8rem; }
figure.item { margin: 0; padding: 0.5rem; border: 1px solid #e3e3e3; border-radius: 6px; background: #fafafa; }
figure.item img { width: 100%; } figure.item.image { max-width: 200px; } figure.item.image img { image-rendering: pixelated; }
figure.item audio { width: 100%; } canvas.molecule-view { width: 100%; background: #fff; cursor: grab; }
figcaption { font-size: 0.85rem; color: #333; margin-top: 0.3rem; word-break: break-word; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.82rem; }
details { margin: 0.6rem 0; } summary { cursor: pointer; font-weight: 600; }
.card table { font-size: 0.85rem; } .note { color: #8a5a00; }
"""


# ----------------------------------------------------------------------------- entry point


def report(paths: Sequence[str | Path], out: str | Path | None = None, *, max_items: int = MAX_ITEMS) -> Path:
    """Write one HTML page of the samples folders and run folders ``paths`` to ``out`` (default:
    ``report.html`` in the first folder), atomically; return its path. ``max_items``: how many
    samples of each samples folder the page shows (the first, in seed order)."""
    folders = [Path(p) for p in paths]
    if not folders:
        raise InputError("no folder to report on (give a samples folder, a run folder, or both)")
    if max_items < 0:
        raise InputError(f"max_items must be >= 0, not {max_items}")
    page = _Page()
    for folder in folders:
        kind = folder_kind(folder)
        (samples_section if kind == "samples" else run_section)(page, folder, max_items)
    out = Path(out) if out is not None else folders[0] / REPORT
    title = "sciffusion report: " + ", ".join(f.name or str(f) for f in folders)
    atomic_write_text(out, page.html(title))
    return out


def folder_kind(folder: Path) -> str:
    """"samples" (a folder of ``sciffusion sample``) or "run" (of ``sciffusion train``)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if (folder / RUN).is_file():
        return "samples"
    if (folder / "log.jsonl").is_file() or (folder / "config.json").is_file():
        return "run"
    raise InputError(f"{folder}: neither a samples folder (no {RUN}) nor a training run folder (no log.jsonl or "
                     f"config.json)")


# ----------------------------------------------------------------------------- the page


class _Page:
    """The sections of the page and the molecules its viewers draw."""

    def __init__(self):
        self.parts: list[str] = []
        self.molecules: dict[str, dict] = {}

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def molecule(self, item: Mapping, where: Path) -> str:
        key = f"m{len(self.molecules)}"
        atoms = _atoms(item.get("atoms"), where)
        self.molecules[key] = {"atoms": atoms, "bonds": _bonds(item.get("bonds", []), len(atoms), where)}
        return f'<canvas class="molecule-view" width="520" height="440" data-mol="{key}"></canvas>'

    def html(self, title: str) -> str:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        data = _script_json(self.molecules)
        script = (f'<script type="application/json" id="molecules">{data}</script>\n'
                  f"<script>{_VIEWER.read_text(encoding='utf-8')}</script>") if self.molecules else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<link rel=\"icon\" href=\"data:,\"><title>{_e(title)}</title><style>{_STYLE}</style></head>\n"
                f"<body><h1>{_e(title)}</h1><p class=\"meta\">written {now} by sciffusion {_e(__version__)}; "
                "self-contained: nothing is fetched when it is viewed</p>\n"
                + "\n".join(self.parts) + f"\n{script}\n</body></html>\n")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _script_json(obj: Any) -> str:
    """JSON that is inert inside <script>: no "<", ">" or "&" that the HTML tokenizer could read."""
    return (json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read it for the report ({e.strerror or e})") from None


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str) -> str:
    return f'<img src="{_data_uri(data, "image/png")}" alt="{_e(alt)}">'


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (dict, list)):
        return _e(json.dumps(v, sort_keys=True))
    return _e(v)


def _table(rows: Sequence[tuple[str, Any]], head: tuple[str, str] | None = None) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td class=\"{'num' if isinstance(v, (int, float)) else ''}\">{_value(v)}</td></tr>"
                   for k, v in rows)
    top = f"<tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>" if head else ""
    return f"<table>{top}{body}</table>"


def _pictures(named: Iterable[tuple[str, bytes]]) -> str:
    """PNG pictures, each under its name."""
    return "".join(f'<div class="pictures"><p><b>{_e(name)}</b></p>{_img(data, name)}</div>' for name, data in named)


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _config(cfg: Any, where: str) -> str:
    text = dump_toml(cfg) if isinstance(cfg, dict) and cfg else "(no config recorded)\n"
    return f"<details><summary>resolved config ({_e(where)})</summary><pre>{_e(text)}</pre></details>"


def _card(folder: Path | None) -> str:
    if folder is None or not (folder / CARD).is_file():
        return ""
    text = (folder / CARD).read_text(encoding="utf-8", errors="replace")
    return f'<details class="card" open><summary>model card ({_e(folder / CARD)})</summary>{_markdown(text)}</details>'


# ----------------------------------------------------------------------------- samples


def _summary(values: Sequence[Any]) -> Any:
    distinct = sorted({json.dumps(v, sort_keys=True) for v in values})
    if not distinct:
        return "(none)"
    return json.loads(distinct[0]) if len(distinct) == 1 else "mixed: " + ", ".join(distinct[:6])


def provenance(run: Mapping, rows: Sequence[Mapping]) -> list[tuple[str, Any]]:
    """The facts of a samples folder a reader needs to trust or reproduce it."""
    seeds = run.get("seeds") or {}
    out = [("domain", run.get("domain")), ("status", run.get("status")),
           ("samples written", len(rows)), ("seeds", f"{seeds.get('count')} seeds, {seeds.get('first')}.."
                                                     f"{seeds.get('last')} (sha256 {str(seeds.get('sha256'))[:16]})"),
           ("checkpoint", run.get("checkpoint")), ("checkpoint step", run.get("checkpoint_step")),
           ("checkpoint sha256", run.get("checkpoint_hash")), ("weights", run.get("weights"))]
    for key in ("sampler", "steps", "grid", "guidance"):
        out.append((key, _summary([r.get(key) for r in rows])))
    out.append(("network calls per sample", _summary([r.get("network_calls") for r in rows])))
    for key in ("device", "world_size", "seconds", "samples_per_s", "finished_utc", "sciffusion_version", "torch"):
        if key in run:
            out.append((key.replace("_", " "), run[key]))
    return out


def samples_section(page: _Page, folder: Path, max_items: int) -> None:
    run, rows = read_samples(folder)
    domain = get_domain(str(run.get("domain")))
    ckpt = samples_checkpoint([folder], domain.name)
    data_config = ckpt.data_config if ckpt is not None else {}
    page.add(f"<section class=\"samples\"><h2>samples: {_e(folder)}</h2>", _table(provenance(run, rows)))
    if ckpt is None:
        page.add(f"<p class=\"note\">the checkpoint {_e(run.get('checkpoint'))} is not here as it was (moved or "
                 "changed): no model card, and samples are shown without its data facts</p>")
    pictures = [p for p in [inside(folder, run.get("picture"))] if p is not None and p.is_file()]
    evaluation = read_evaluation(folder / EVALUATION)
    if evaluation is None:
        page.add(f"<p class=\"note\">not evaluated yet: <code>sciffusion evaluate {_e(domain.name)} "
                 f"{_e(folder)}</code> keeps its metrics and pictures for this page</p>")
    else:
        page.add(f"<h3>metrics ({_e(evaluation.get('written', ''))})</h3>",
                 _table(sorted(evaluation["metrics"].items()), ("metric", "value")))
        if evaluation.get("files") is not None and evaluation["files"] != len(rows):
            page.add(f"<p class=\"note\">these metrics scored {_e(evaluation['files'])} files; the folder now "
                     f"has {len(rows)} samples: run <code>sciffusion evaluate {_e(domain.name)} {_e(folder)}</code> "
                     "again</p>")
        listed = [inside(folder / EVALUATION, name) for name in evaluation.get("pictures") or []]
        pictures += [p for p in listed if p is not None and p.is_file()]
    if pictures:
        page.add("<h3>pictures</h3>", _pictures((p.name, _read(p)) for p in pictures))
    if run.get("status") != "complete":
        page.add(f"<p class=\"note\">generation is not complete: {len(rows)} of {_e((run.get('seeds') or {}).get('count'))} "
                 "samples are written so far</p>")
    shown = rows[:max_items]
    if shown:
        page.add(f"<h3>samples ({len(shown)} of {len(rows)}, in seed order)</h3><div class=\"items\">")
        page.add(*(sample_item(page, domain, folder, r.get("file"), data_config) for r in shown))
        page.add("</div>")
    page.add(_card(ckpt.path if ckpt is not None else None), _config(run.get("config"), str(folder / RUN)),
             "</section>")


def sample_item(page: _Page, domain, folder: Path, name: Any, data_config: dict) -> str:
    """One sample as the domain shows it (``Domain.report_item``), its name alone, or a note of why
    it cannot be shown."""
    path = inside(folder, name)
    if path is None:
        return f'<figure class="item"><figcaption class="note">not shown: the manifest names {_e(name)!s}, ' \
               'which is not a file inside the folder</figcaption></figure>'
    try:
        return _item_html(page, domain, path, domain.report_item(path, data_config))
    except Exception as e:  # noqa: BLE001 - one sample must not take the page with it
        return (f'<figure class="item"><figcaption class="note">{_e(path.name)}: not shown ({_e(type(e).__name__)}: '
                f'{_e(str(e).splitlines()[0] if str(e) else "")})</figcaption></figure>')


def _item_html(page: _Page, domain, path: Path, item: Any) -> str:
    if item is None:
        return f'<figure class="item"><figcaption>{_e(path.name)}</figcaption></figure>'
    if not isinstance(item, Mapping) or item.get("kind") not in ITEM_KINDS:
        raise InputError(f"domain '{domain.name}': report_item must give a dict whose kind is one of {ITEM_KINDS}, "
                         f"not {item!r:.80}")
    caption = f"<figcaption>{_e(item.get('caption') or path.name)}</figcaption>"
    kind = item["kind"]
    if kind == "image":
        return f'<figure class="item image">{_img(_read(Path(item["path"])), path.name)}{caption}</figure>'
    if kind == "audio":
        picture = _img(_read(Path(item["picture"])), path.name) if item.get("picture") else ""
        player = f'<audio controls preload="metadata" src="{_data_uri(_read(Path(item["path"])), "audio/wav")}"></audio>'
        return f'<figure class="item audio">{picture}{player}{caption}</figure>'
    return f'<figure class="item molecule">{page.molecule(item, path)}{caption}</figure>'


def _atoms(atoms: Any, where: Path) -> list:
    try:
        out = [[str(a[0]), float(a[1]), float(a[2]), float(a[3])] for a in atoms]
    except (TypeError, ValueError, IndexError):
        raise InputError(f"{where}: a molecule item's atoms must be [symbol, x, y, z] rows") from None
    if not out or not all(math.isfinite(v) for a in out for v in a[1:]):
        raise InputError(f"{where}: no atoms, or a non-finite coordinate, to show")
    return out


def _bonds(bonds: Any, atoms: int, where: Path) -> list:
    try:
        out = [[int(b[0]), int(b[1]), float(b[2])] for b in bonds]
    except (TypeError, ValueError, IndexError):
        raise InputError(f"{where}: a molecule item's bonds must be [i, j, order] rows") from None
    bad = [b for b in out if not (0 <= b[0] < atoms and 0 <= b[1] < atoms)]
    if bad:
        raise InputError(f"{where}: bond {bad[0][:2]} names an atom outside 0..{atoms - 1}")
    return out


# ----------------------------------------------------------------------------- training runs


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None


def latest_values(records: Sequence[Mapping]) -> list[tuple[str, Any]]:
    """The last logged number of every key, with the step it was logged at."""
    last: dict[str, tuple[int, Any]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                last[k] = (int(r.get("step", 0)), v)
    return [(f"{k} (step {s})", v) for k, (s, v) in sorted(last.items())]


def run_section(page: _Page, folder: Path, max_items: int) -> None:
    cfg = _json(folder / "config.json") if (folder / "config.json").is_file() else {}
    records = read_log(folder)
    page.add(f"<section class=\"run\"><h2>training run: {_e(folder)}</h2>")
    pictures = training_picture_bytes(records, title=f"{cfg.get('domain', '')}: {folder.name}")
    if pictures:
        page.add("<h3>training pictures</h3>", _pictures(pictures.items()))
    else:
        page.add("<p class=\"note\">no loss logged yet</p>")
    if records:
        page.add("<h3>last logged values</h3>", _table(latest_values(records), ("value", "")))
        events = [(f"step {r.get('step')}", {k: v for k, v in r.items() if k != "step"}) for r in records if "event" in r]
        if events:
            page.add("<h3>events</h3>", _table(events))
    ckpts = list_checkpoints(folder)
    if ckpts:
        page.add("<h3>checkpoints</h3>", _table([(p.name, step) for step, p in ckpts], ("checkpoint", "step")))
    page.add(_card(folder), _config(cfg, str(folder / "config.json")), "</section>")
