"""The output folder of batch generation: its manifest parts, the run record, and the checks that
make a rerun resume (or refuse) safely.

    out/
      00000000.csv ...             one file per seed, written atomically by the domain
      .parts/shard-000000.jsonl    one manifest line per sample of the shard, written atomically
                                   after all of the shard's files: a shard is complete iff its part exists
      manifest.jsonl               all parts concatenated in seed-list order (written at the end,
                                   removed when a run with work to do starts)
      run.json                     config, checkpoint, hashes, counts (written at the start with
                                   status "running" and again at the end with status "complete")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from .config import flatten
from .io import InputError, atomic_path, atomic_write_json, is_temporary, remove_stale_temporaries, sha256_file

FORMAT = "sciffusion-samples/1"
PARTS = ".parts"
MANIFEST = "manifest.jsonl"
RUN = "run.json"
RUN_PICTURE = "grid.png"  # the domain's picture of the whole run (Domain.run_picture), when it draws one
EVALUATION = "evaluation"  # what `sciffusion evaluate` kept of the folder (core.evaluation)
EVALUATION_RECORD = "metrics.json"  # in EVALUATION: the metrics and the pictures written with them
REPORT = "report.html"  # what `sciffusion report` wrote of the folder
# what the engine writes into a samples folder beside the domain's files (never read as samples)
ENGINE_FILES = (MANIFEST, RUN, RUN_PICTURE, REPORT)
_PART = re.compile(r"^shard-(\d+)\.jsonl$")
# keys of sample.* that never change a sample (left out of the config hash): how samples are
# batched and sharded, and whether the run's picture is drawn
NOT_HASHED = ("batch_size", "shard_size", "grid_picture")


def part_name(k: int) -> str:
    return f"shard-{k:06d}.jsonl"


def config_diff(old: Any, new: dict) -> str:
    if not isinstance(old, dict):
        return ""
    a, b = flatten({k: v for k, v in old.items()}), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")
                  and k.split(".")[-1] not in NOT_HASHED)
    if not keys:
        return ""
    shown = "; ".join(f"{k}: {a.get(k, '<unset>')!r} there, {b.get(k, '<unset>')!r} now" for k in keys[:5])
    return f" ({shown}{'; ...' if len(keys) > 5 else ''})"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_lines(path: Path) -> list[dict] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(row, dict):
            return None
        rows.append(row)
    return rows


def _row_files(row: dict) -> list:
    """The files of one manifest row: the sample and its companions (e.g. a picture)."""
    extra = row.get("companions")
    return [row.get("file")] + (list(extra) if isinstance(extra, list) else [])


def file_check(path: Path) -> list:
    """[bytes, sha256] of a written file, as manifest rows record it."""
    return [path.stat().st_size, sha256_file(path)]


def row_intact(out: Path, row: dict) -> bool:
    """Every file of a manifest row is there and (when the row records them) has its size and hash."""
    files = _row_files(row)
    if not all(isinstance(f, str) and (out / f).is_file() for f in files):
        return False
    checks = row.get("checks")
    if not isinstance(checks, dict):  # a folder written before rows carried checks
        return True
    for f in files:
        want = checks.get(f)
        if not (isinstance(want, list) and len(want) == 2):
            return False
        path = out / f
        if path.stat().st_size != want[0] or sha256_file(path) != want[1]:
            return False
    return True


def inside(out: Path, name: Any) -> Path | None:
    """``out / name`` for a relative file name a record of the folder gives, None for anything that
    could point outside it (absolute, "..", empty, not a string)."""
    if isinstance(name, str) and name and not os.path.isabs(name) and ".." not in Path(name).parts:
        return out / name
    return None


def _listed_files(out: Path) -> Iterator[Path]:
    """Files named by this folder's manifest and parts."""
    sources = [out / MANIFEST] + sorted((out / PARTS).glob("shard-*.jsonl"))
    for src in sources:
        for row in _read_lines(src) or []:
            for f in _row_files(row):
                path = inside(out, f)
                if path is not None:
                    yield path


def evaluation_files(out: Path) -> list[Path] | None:
    """The files of the evaluation record in ``out/evaluation`` (``record_files``)."""
    return record_files(out / EVALUATION)


def record_files(folder: Path) -> list[Path] | None:
    """The files of the evaluation record in ``folder`` (the record and the pictures it lists);
    None when the folder holds no record of sciffusion's (then its files are the user's)."""
    record = _read_json(folder / EVALUATION_RECORD)
    if not (isinstance(record, dict) and isinstance(record.get("metrics"), dict) and "domain" in record):
        return None
    pictures = [inside(folder, p) for p in record.get("pictures") or []]
    return [folder / EVALUATION_RECORD] + [p for p in pictures if p is not None]


def _clear(out: Path) -> None:
    """What an earlier run wrote here: the files its manifest and parts list, parts, manifest, run.json,
    the run picture, and the evaluation record made of them (with the pictures it lists).
    Files nobody listed are left alone."""
    dirs = set()
    for f in set(_listed_files(out)):
        dirs.add(f.parent)
        f.unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / RUN).unlink(missing_ok=True)
    (out / RUN_PICTURE).unlink(missing_ok=True)
    for f in evaluation_files(out) or []:
        f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / EVALUATION).rmdir()  # when nothing else is in it
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):  # sub-folders a domain made, if now empty
        if d != out:
            try:
                d.rmdir()
            except OSError:
                pass


def _remove_temporaries(out: Path, recursive: bool) -> None:
    remove_stale_temporaries(out)
    remove_stale_temporaries(out / PARTS)
    if recursive:
        for root, dirnames, _ in os.walk(out):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if Path(root) != out:
                remove_stale_temporaries(root)


def _refuse(out: Path, what: str) -> InputError:
    return InputError(f"{out}: {what}; resume only with the same model and sampling config, "
                      "or pick a new folder, or pass overwrite=True (--overwrite) to clear it first")


def _check_run(out: Path, run: Any, chash: str, ckhash: str, cfg: dict) -> None:
    """The folder's run.json (when readable) describes this checkpoint and config, else ``_refuse``."""
    if not isinstance(run, dict):
        return
    if run.get("checkpoint_hash") != ckhash:
        raise _refuse(out, f"holds samples of another checkpoint (hash {str(run.get('checkpoint_hash'))[:12]}, "
                           f"this one {ckhash[:12]})")
    if run.get("config_hash") != chash:
        raise _refuse(out, "holds samples made with another config" + config_diff(run.get("config"), cfg))


def shard_state(out: Path, shards: list[list[int]], *, chash: str, ckhash: str, cfg: dict) -> dict[int, list[int]]:
    """Read-only: per shard, the seeds not there intact (all its seeds when its manifest part is
    missing or unreadable; those whose files are missing or damaged otherwise); complete shards map
    to []. The folder must hold this checkpoint's and config's samples. ``verify`` reports this."""
    if not out.is_dir():
        raise InputError(f"{out}: no such folder")
    _check_run(out, _read_json(out / RUN), chash, ckhash, cfg)
    state = {}
    for k, seeds in enumerate(shards):
        rows = _read_lines(out / PARTS / part_name(k))  # None when missing or unreadable
        if rows is None or [r.get("seed") for r in rows] != seeds:
            state[k] = list(seeds)
        else:
            state[k] = [int(r["seed"]) for r in rows if not row_intact(out, r)]
    return state


def prepare(out: Path, *, shards: list[list[int]], chash: str, ckhash: str, cfg: dict, overwrite: bool,
            header: dict, part: bool = False) -> list[int]:
    """Rank 0: check and clean the folder, write run.json (status running); the complete shards.
    ``part``: one of several independent parts writing into this folder at once: temporaries are
    left alone (another part may be writing them) and clearing the folder is refused."""
    if part and overwrite:
        raise InputError(f"{out}: --overwrite cannot be combined with --part (other parts may be writing here); "
                         "clear the folder once, without --part, first")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    run = _read_json(out / RUN) if (out / RUN).exists() else None
    ours = (isinstance(run, dict) and run.get("format") == FORMAT) or (out / PARTS).is_dir() or (out / MANIFEST).is_file()
    if (out / RUN).exists() and not (isinstance(run, dict) and run.get("format") == FORMAT):
        ours = False
    if not ours and not overwrite:
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if others:
            raise InputError(f"{out}: the folder is not empty and holds no sciffusion samples "
                             f"(found {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                             "pick a new or empty folder, or pass overwrite=True (--overwrite) to write into it")
    if overwrite:
        _clear(out)
    if not part:
        _remove_temporaries(out, recursive=ours or not any(not is_temporary(p) for p in out.iterdir()))

    complete: list[int] = []
    if not overwrite:
        _check_run(out, run, chash, ckhash, cfg)
        manifest = out / MANIFEST
        if manifest.is_file():
            rows = _read_lines(manifest) or []
            if rows and (rows[0].get("checkpoint_hash") != ckhash or rows[0].get("config_hash") != chash):
                raise _refuse(out, f"its {MANIFEST} lists samples of another checkpoint or config")
        parts = out / PARTS
        if parts.is_dir():
            for p in sorted(parts.iterdir()):
                m = _PART.match(p.name)
                if not m:
                    continue
                k = int(m.group(1))
                rows = _read_lines(p)
                if rows is None:  # cannot happen with atomic writes; be safe and redo the shard
                    p.unlink(missing_ok=True)
                    continue
                for row in rows:
                    if row.get("checkpoint_hash") != ckhash or row.get("config_hash") != chash:
                        raise _refuse(out, f"{PARTS}/{p.name} lists samples of another checkpoint or config")
                if k >= len(shards) or [row.get("seed") for row in rows] != shards[k]:
                    raise _refuse(out, f"{PARTS}/{p.name} holds other seeds than this run's shard {k} "
                                       "(the folder was made for another seed list or shard size)")
                if all(row_intact(out, row) for row in rows):
                    complete.append(k)
                else:  # a listed file went missing or was damaged: generate the shard again
                    p.unlink(missing_ok=True)
    (out / PARTS).mkdir(exist_ok=True)
    if len(complete) < len(shards):  # a manifest.jsonl always means: the run it describes is complete
        (out / MANIFEST).unlink(missing_ok=True)
    atomic_write_json(out / RUN, dict(header, status="running"))
    return complete


def write_manifest(out: Path, shards: list[list[int]]) -> int:
    """Concatenate the parts in seed-list order into manifest.jsonl (atomically); the line count."""
    count = 0
    with atomic_path(out / MANIFEST) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for k, seeds in enumerate(shards):
                part = out / PARTS / part_name(k)
                try:
                    text = part.read_text(encoding="utf-8")
                except FileNotFoundError:
                    raise RuntimeError(f"{part}: shard {k} has no manifest part after generation") from None
                lines = [ln for ln in text.splitlines() if ln.strip()]
                if len(lines) != len(seeds):
                    raise RuntimeError(f"{part}: {len(lines)} lines for {len(seeds)} seeds")
                for ln in lines:
                    f.write(ln + "\n")
                count += len(lines)
    return count


def read_samples(out: Path) -> tuple[dict, list[dict]]:
    """A samples folder's run record and its manifest rows, in seed-list order; while the run is
    incomplete, the rows of its complete shards. InputError naming the file when the folder is not
    a samples folder or its record is damaged."""
    out = Path(out)
    run = _read_json(out / RUN)
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        what = "is not a sciffusion run record" if (out / RUN).is_file() else "is missing"
        raise InputError(f"{out / RUN}: {what}; is {out} a folder written by `sciffusion sample`?")
    if (out / MANIFEST).is_file():
        rows = _read_lines(out / MANIFEST)
        if rows is None:
            raise InputError(f"{out / MANIFEST}: damaged (not one JSON object per line); rerun the same "
                             f"`sciffusion sample` command to repair it")
        return run, rows
    rows = []
    for part in sorted((out / PARTS).glob("shard-*.jsonl")):  # shard order, each in seed-list order
        rows.extend(_read_lines(part) or [])
    return run, rows
