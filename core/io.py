"""Files that appear whole or not at all: write to a temporary name in the same folder, flush and
fsync, then rename over the target (atomic on POSIX)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


TMP = ".tmp"  # the mark of a temporary's name


class InputError(ValueError):
    """Bad input from a user's file: the message names the file and the problem (CLI exit code 1)."""


def cache_dir(*parts: str) -> Path:
    """sciffusion's cache folder ``$SCIFFUSION_CACHE/<parts>`` (default ``~/.cache/sciffusion``), not created."""
    root = os.environ.get("SCIFFUSION_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "sciffusion").joinpath(*parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public_mode(path: Path, directory: bool = False) -> None:
    """Give a temporary (created 0600/0700) the permissions a normal open() would: 0666/0777 & ~umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    For writers that insist on a file name (safetensors, soundfile, RDKit, ``np.save``...). The
    temporary ends with the target's suffix (``.x.npy.XXXX.tmp.npy``), so writers that add a
    missing suffix (NumPy) or pick a format by it write where they are told."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _public_mode(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path`` (which must
    not exist yet), on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                _public_mode(f)  # writers such as safetensors create their files 0600
        _fsync_dir(tmp)
        _public_mode(tmp, directory=True)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temporary(p: Path) -> bool:
    """A temporary of ``atomic_path`` / ``atomic_directory``: ``.NAME.XXXX.tmp`` or ``.NAME.XXXX.tmp.SUFFIX``."""
    name = Path(p).name
    return name.startswith(".") and (name.endswith(TMP) or TMP + "." in name)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by a killed writer (see :func:`is_temporary`); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in [p for p in folder.glob(".*") if is_temporary(p)]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
