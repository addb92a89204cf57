"""Molecule data: QM9 (offline, from the ``qm9pack`` wheel, EDM split, cached as one npz) and users'
files (SDF, XYZ, SMILES).

Every reader returns :class:`~.types.Molecule` records with explicit hydrogens and 3D positions in
Angstrom. Readers of users' files share one contract: a bad record raises
:class:`~sciffusion.core.io.InputError` whose message names the file, the record (1-based, with its
title/name and line where known) and the reason; with ``skip_bad=True`` bad records are skipped
instead and the same messages are returned in a list beside the molecules.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ...core.io import InputError, atomic_path, cache_dir
from .chem import bond_orders_batch, embed_smiles, num_fragments, under_bonded
from .types import ATOMIC_NUMBER, SYMBOLS, Molecule

# --------------------------------------------------------------------------------------------- QM9

QM9_COUNT = 130_831
QM9_SPLIT_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
QM9_TRAIN_ATOM_COUNTS = {"H": 923_537, "C": 635_559, "N": 101_476, "O": 140_202, "F": 2_323}
QM9_ELEMENTS = ("H", "C", "N", "O", "F")
QM9_PACKAGE = "qm9pack"  # the PyPI distribution QM9 is read from
QM9_CITATION = ('Ramakrishnan, Dral, Rupp, von Lilienfeld, "Quantum chemistry structures and properties of '
                '134 kilo molecules", Scientific Data 1, 140022 (2014)')

# Short property name -> (qm9pack column, unit). Raw QM9 units, as the CSV holds them.
QM9_PROPERTIES = {
    "A": ("RotA_GHz", "GHz"),
    "B": ("RotB_GHz", "GHz"),
    "C": ("RotC_GHz", "GHz"),
    "mu": ("Dipole_debye", "D"),
    "alpha": ("Polarizability_bohr3", "bohr^3"),
    "homo": ("HOMO_au", "Ha"),
    "lumo": ("LUMO_au", "Ha"),
    "gap": ("HOMO_LUMO_gap_au", "Ha"),
    "r2": ("R2_bohr2", "bohr^2"),
    "zpve": ("ZPVE_au", "Ha"),
    "U0": ("InternalEnergy_0K_au", "Ha"),
    "U": ("InternalEnergy_298K_au", "Ha"),
    "H": ("Enthalphy_298K_au", "Ha"),
    "G": ("GibbsFreeEnergy_298K_au", "Ha"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)"),
}
QM9_PROPERTY_UNITS = {k: u for k, (_, u) in QM9_PROPERTIES.items()}

_CACHE_VERSION = "qm9-npz-v1"
_CACHE_FILE = "qm9.npz"


def default_cache_dir() -> Path:
    """``$SCIFFUSION_CACHE/qm9`` if that variable is set, else ``~/.cache/sciffusion/qm9``."""
    return cache_dir("qm9")


def qm9_source_dir() -> Path | None:
    """The folder holding qm9pack's CSV files, found without importing qm9pack (its ``__init__``
    needs pkg_resources); None when qm9pack is not installed."""
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def qm9_package_version() -> str | None:
    """The installed version of the package QM9 is read from, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(QM9_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def _qm9_csvs() -> list[Path]:
    folder = qm9_source_dir()
    if folder is None:
        raise InputError('QM9 is read from the qm9pack package, which is not installed: pip install "sciffusion[qm9]"')
    files = [folder / f"qm9_part{i}.csv" for i in (1, 2, 3)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"qm9pack is installed but its data files are missing: {', '.join(missing)}; "
                         'reinstall it: pip install --force-reinstall "sciffusion[qm9]"')
    return files


def _source_signature(files: list[Path]) -> str:
    return ";".join(f"{f.name}:{f.stat().st_size}" for f in files)


def qm9_split_indices(split: str) -> np.ndarray:
    """0-based positions (in GDB-id order) of the EDM split: ``np.random.seed(0)``,
    ``permutation(130831)``; train = [:100000], valid = [100000:117748], test = [117748:]. Sorted,
    so molecules come in GDB-id order within a split. ``"all"``: every position."""
    if split == "all":
        return np.arange(QM9_COUNT)
    if split not in QM9_SPLIT_SIZES:
        raise InputError(f"unknown QM9 split {split!r}: use train, valid, test or all")
    perm = np.random.RandomState(0).permutation(QM9_COUNT)  # == np.random.seed(0); np.random.permutation
    a, b = QM9_SPLIT_SIZES["train"], QM9_SPLIT_SIZES["train"] + QM9_SPLIT_SIZES["valid"]
    part = {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}[split]
    return np.sort(part)


def _parse_float_list(text: str, where: str) -> list[float]:
    # "[[x,y,z],[...]]" with Python float literals ("0.", "1.", "2.1E-6"): float() reads them all.
    try:
        return [float(t) for t in text.replace("[", "").replace("]", "").split(",")]
    except ValueError as e:
        raise InputError(f"{where}: cannot read coordinates: {e}") from None


def _build_qm9_arrays(files: list[Path]) -> dict:
    """Parse qm9pack's CSVs into concatenated arrays (sorted by GDB id)."""
    csv.field_size_limit(1 << 30)
    ids, counts, z_all, pos_all, props = [], [], [], [], []
    prop_cols = [c for c, _ in QM9_PROPERTIES.values()]
    for f in files:
        with open(f, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            col = {name: i for i, name in enumerate(header)}
            missing = [c for c in ["Index", "N_atoms", "Elements", "XYZ_Ang", *prop_cols] if c not in col]
            if missing:
                raise InputError(f"{f}: unexpected qm9pack format, missing columns {missing}")
            ci, cn, ce, cx = col["Index"], col["N_atoms"], col["Elements"], col["XYZ_Ang"]
            cp = [col[c] for c in prop_cols]
            for line_no, row in enumerate(reader, start=2):
                where = f"{f}: row {line_no}"
                try:
                    n = int(row[cn])
                    syms = [s.strip().strip("'\"") for s in row[ce].strip()[1:-1].split(",")]
                    z = [ATOMIC_NUMBER[s] for s in syms]
                    p = [float(row[c]) for c in cp]
                    gid = int(row[ci])
                except (ValueError, KeyError, IndexError) as e:
                    raise InputError(f"{where}: cannot read molecule: {e!r}") from None
                xyz = _parse_float_list(row[cx], where)
                if len(z) != n or len(xyz) != 3 * n:
                    raise InputError(f"{where}: {n} atoms declared, {len(z)} elements, {len(xyz)} coordinates")
                ids.append(gid)
                counts.append(n)
                z_all.extend(z)
                pos_all.extend(xyz)
                props.append(p)
    ids_a = np.asarray(ids, np.int64)
    counts_a = np.asarray(counts, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts_a)])
    z_a = np.asarray(z_all, np.int8)
    pos_a = np.asarray(pos_all, np.float64).reshape(-1, 3)
    props_a = np.asarray(props, np.float64)
    order = np.argsort(ids_a, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):  # qm9pack ships them sorted; be safe anyway
        starts, ends = offsets[:-1][order], offsets[1:][order]
        atom_idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        z_a, pos_a, ids_a, props_a, counts_a = z_a[atom_idx], pos_a[atom_idx], ids_a[order], props_a[order], counts_a[order]
        offsets = np.concatenate([[0], np.cumsum(counts_a)])
    return {"atomic_numbers": z_a, "positions": pos_a, "offsets": offsets, "gdb_ids": ids_a,
            "properties": props_a, "property_names": np.array(list(QM9_PROPERTIES))}


def _check_qm9(arrays: dict, where: str) -> None:
    n = len(arrays["gdb_ids"])
    if n != QM9_COUNT:
        raise InputError(f"{where}: QM9 holds {n} molecules, expected {QM9_COUNT} (corrupt or wrong qm9pack version; "
                         "delete the cache and reinstall qm9pack 1.0.3)")
    if len(np.unique(arrays["gdb_ids"])) != n:
        raise InputError(f"{where}: duplicate GDB ids in QM9")
    offsets = arrays["offsets"]
    sizes = np.diff(offsets)
    in_train = np.zeros(n, bool)
    in_train[qm9_split_indices("train")] = True
    z_train = arrays["atomic_numbers"][np.repeat(in_train, sizes)]
    counts = {s: int((z_train == ATOMIC_NUMBER[s]).sum()) for s in QM9_ELEMENTS}
    if counts != QM9_TRAIN_ATOM_COUNTS or len(z_train) != sum(counts.values()):
        raise InputError(f"{where}: QM9 training split has atom-type counts {counts}, expected "
                         f"{QM9_TRAIN_ATOM_COUNTS} (corrupt data, or a different split/ordering)")


def load_qm9_arrays(split: str = "all", cache_dir: str | Path | None = None) -> dict:
    """QM9 as concatenated arrays for one split: ``atomic_numbers`` (total_atoms,) int64,
    ``positions`` (total_atoms, 3) float64 Angstrom, ``offsets`` (n+1,) (molecule i is atoms
    offsets[i]:offsets[i+1]), ``gdb_ids`` (n,), ``properties`` (n, 15) in the order of
    ``property_names`` (raw units, :data:`QM9_PROPERTY_UNITS`).

    The first call parses qm9pack's CSVs (about half a minute) and writes ``qm9.npz`` atomically to
    ``cache_dir`` (default :func:`default_cache_dir`); later calls read that file."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache / _CACHE_FILE
    files = _qm9_csvs() if qm9_source_dir() is not None or not path.is_file() else None
    signature = _source_signature(files) if files else None
    arrays = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                ok = str(npz["version"]) == _CACHE_VERSION and (signature is None or str(npz["signature"]) == signature)
                if ok:
                    arrays = {k: npz[k] for k in npz.files if k not in ("version", "signature")}
        except Exception:  # unreadable or partial cache from another version: rebuild it
            arrays = None
    if arrays is None:
        if files is None:
            files = _qm9_csvs()
            signature = _source_signature(files)
        arrays = _build_qm9_arrays(files)
        _check_qm9(arrays, str(files[0].parent))
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, version=np.array(_CACHE_VERSION), signature=np.array(signature), **arrays)
        except OSError as e:  # read-only or full disk: go on without a cache
            warnings.warn(f"could not write the QM9 cache {path}: {e}; set SCIFFUSION_CACHE to a writable folder",
                          stacklevel=2)
    else:
        _check_qm9(arrays, str(path))
    idx = qm9_split_indices(split)
    offsets = arrays["offsets"]
    sizes = np.diff(offsets)[idx]
    in_split = np.zeros(len(offsets) - 1, bool)
    in_split[idx] = True
    atom_idx = np.repeat(in_split, np.diff(offsets))  # idx is sorted: a mask keeps GDB order
    return {"atomic_numbers": arrays["atomic_numbers"][atom_idx].astype(np.int64),
            "positions": arrays["positions"][atom_idx],
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "gdb_ids": arrays["gdb_ids"][idx],
            "properties": arrays["properties"][idx],
            "property_names": [str(s) for s in arrays["property_names"]]}


def load_qm9(split: str, cache_dir: str | Path | None = None) -> list[Molecule]:
    """QM9 molecules of one EDM split ("train", "valid", "test" or "all") in GDB-id order, with
    properties under their short names (A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv; raw
    units, :data:`QM9_PROPERTY_UNITS`) and ``name`` = the GDB id as a string. See
    :func:`load_qm9_arrays` for the cache."""
    a = load_qm9_arrays(split, cache_dir)
    cuts = a["offsets"][1:-1]
    names = a["property_names"]
    return [Molecule(z, x, dict(zip(names, p)), str(i))
            for z, x, p, i in zip(np.split(a["atomic_numbers"], cuts), np.split(a["positions"], cuts),
                                  a["properties"].tolist(), a["gdb_ids"].tolist())]


def atom_count_prior(molecules, max_atoms: int | None = None) -> np.ndarray:
    """Histogram of atom counts: ``h[n]`` = number of molecules with n atoms (int64, length
    max(n)+1, or ``max_atoms``+1 when given). Normalise it for the sampling prior p(N)."""
    sizes = np.asarray([m.num_atoms for m in molecules], np.int64)
    length = (int(sizes.max()) + 1 if len(sizes) else 1) if max_atoms is None else max_atoms + 1
    if len(sizes) and sizes.max() >= length:
        raise ValueError(f"a molecule has {int(sizes.max())} atoms, above max_atoms={max_atoms}")
    return np.bincount(sizes, minlength=length).astype(np.int64)


# ------------------------------------------------------------------------------ users' files: common

class _Collector:
    """Raises or collects reasons for bad records."""

    def __init__(self, path, skip_bad: bool):
        self.path, self.skip_bad, self.skipped = str(path), skip_bad, []

    def bad(self, record: str, reason: str) -> None:
        msg = f"{self.path}: {record}: {reason}"
        if not self.skip_bad:
            raise InputError(msg)
        self.skipped.append(msg)


def _check_molecule(z: list[int] | np.ndarray, pos: np.ndarray, elements, max_atoms) -> str | None:
    """Reason why a parsed molecule is unusable, or None."""
    n = len(z)
    if n == 0:
        return "no atoms"
    if max_atoms is not None and n > max_atoms:
        return f"{n} atoms, above the maximum of {max_atoms}"
    for zi in z:
        if not 1 <= int(zi) <= len(SYMBOLS):
            return f"unsupported element (atomic number {int(zi)})"
    if elements is not None:
        bad = sorted({SYMBOLS[int(zi) - 1] for zi in z} - set(elements), key=lambda s: ATOMIC_NUMBER[s])
        if bad:
            return f"element {', '.join(bad)} not in the allowed elements {_fmt_elements(elements)}"
    if not np.all(np.isfinite(pos)):
        return "non-finite coordinate"
    if n > 1 and np.ptp(pos, axis=0).max() == 0.0:
        return "no 3D coordinates (all atoms at the same position)"
    pair = _coincident_atoms(pos)
    if pair is not None:
        return (f"atoms {pair[0] + 1} and {pair[1] + 1} are at the same position (closer than "
                f"{COINCIDENT_ANGSTROM:g} Angstrom)")
    return None


COINCIDENT_ANGSTROM = 1e-4  # the precision of an SDF coordinate: atoms closer than this coincide


def _coincident_atoms(pos: np.ndarray) -> tuple[int, int] | None:
    """The first pair (i < j) of atoms closer than COINCIDENT_ANGSTROM, or None."""
    diff = pos[:, None, :] - pos[None, :, :]
    close = np.triu(np.einsum("ijk,ijk->ij", diff, diff) < COINCIDENT_ANGSTROM ** 2, k=1)
    hits = np.argwhere(close)
    return (int(hits[0][0]), int(hits[0][1])) if len(hits) else None


def _missing_hydrogens(z: np.ndarray, pos: np.ndarray) -> str | None:
    """Why a molecule without hydrogen atoms (and without bonds in its file) is a heavy-atom
    skeleton whose hydrogens were left out, or None; bonds inferred from the distances (EDM rules)."""
    if (z == 1).any():
        return None
    bonds = bond_orders_batch(z[None], pos[None])[0]
    short = [int(i) + 1 for i in np.flatnonzero(under_bonded(z, bonds))]
    return _skeleton(short, len(z), num_fragments(bonds), "by their distances")


def _skeleton(short: list[int], n: int, fragments: int, judged: str) -> str | None:
    """The refusal of a hydrogen-free molecule that is one connected piece in which most of the
    ``n`` atoms (1-based ``short``) lack bonds for their valence, or None. Real H-free molecules
    exist (QM9 has cyanogen and dicyano-oxadiazoles) and pass; so do scattered atoms (a poor
    generated sample is scored, not refused)."""
    if fragments != 1 or 2 * len(short) <= n:
        return None
    return (f"no hydrogen atoms, and {judged} {len(short)} of its {n} atoms (atom(s) {short[:5]}"
            f"{'...' if len(short) > 5 else ''}) have fewer bonds than their valence: the file was written "
            "without explicit hydrogens; write them with 3D coordinates (e.g. RDKit Chem.AddHs(mol, addCoords=True))")


def _fmt_elements(elements) -> str:
    return "{" + ", ".join(sorted(elements, key=lambda s: ATOMIC_NUMBER.get(s, 999))) + "}"


def _norm_elements(elements) -> set[str] | None:
    if elements is None:
        return None
    out = set()
    for e in elements:
        s = SYMBOLS[int(e) - 1] if isinstance(e, (int, np.integer)) else str(e).strip().capitalize()
        if s not in ATOMIC_NUMBER:
            raise InputError(f"unknown element {e!r} in the allowed elements")
        out.add(s)
    return out


# ------------------------------------------------------------------------------------------------ SDF

def _sdf_records(text: str):
    """Yield (1-based first line, list of lines) per record, split at '$$$$' lines."""
    lines = text.splitlines()
    start, block = 1, []
    for i, line in enumerate(lines, start=1):
        if line.rstrip() == "$$$$":
            yield start, block
            start, block = i + 1, []
        else:
            block.append(line)
    if any(line.strip() for line in block):
        yield start, block


def _sd_fields(lines: list[str]) -> dict:
    """SD data fields after 'M  END': '> <NAME>' then value lines up to a blank line. Values that
    read as numbers become floats."""
    props, i = {}, 0
    while i < len(lines) and not lines[i].startswith("M  END"):
        i += 1
    i += 1
    while i < len(lines):
        line = lines[i]
        if line.startswith(">") and "<" in line and ">" in line[line.index("<"):]:
            name = line[line.index("<") + 1:line.index(">", line.index("<"))]
            vals = []
            i += 1
            while i < len(lines) and lines[i].strip():
                vals.append(lines[i])
                i += 1
            value = "\n".join(vals)
            try:
                props[name] = float(value)
            except ValueError:
                props[name] = value
        i += 1
    return props


def _v2000_truncation(lines: list[str]) -> str | None:
    if len(lines) < 4:
        return f"truncated record: {len(lines)} lines, a mol block needs a header of 3 lines and a counts line"
    counts = lines[3]
    if "V2000" not in counts:
        return None
    try:
        na, nb = int(counts[0:3]), int(counts[3:6])
    except ValueError:
        return f"malformed counts line {counts.strip()!r}"
    if len(lines) < 4 + na + nb:
        return (f"truncated record: the counts line declares {na} atoms and {nb} bonds but only "
                f"{len(lines) - 4} lines follow it")
    if not any(line.startswith("M  END") for line in lines[4 + na + nb:]):
        return "truncated record: no 'M  END' line"
    return None


def _property_problem(fields: dict, name: str) -> str | None:
    """Why the SD data fields cannot give property ``name`` a number, or None."""
    if name not in fields:
        return f"property '{name}' (data.properties): the record has no SD tag <{name}>"
    v = fields[name]
    if isinstance(v, str):
        shown = v if len(v) <= 40 else v[:37] + "..."
        return f"property '{name}' (data.properties): SD tag <{name}> is not a number: {shown!r}"
    if not np.isfinite(v):
        return f"property '{name}' (data.properties): SD tag <{name}> is not a finite number: {v!r}"
    return None


def load_sdf(path, elements=None, max_atoms: int | None = None, skip_bad: bool = False,
             require_explicit_h: bool = True, properties=()) -> tuple[list[Molecule], list[str]]:
    """Molecules from an SDF file (all atoms kept, hydrogens included; properties from the SD data
    fields; name = record title or ``<stem>_<record>``).

    ``properties``: names of SD tags every record must carry as a finite number (the per-molecule
    properties a conditional model is trained on); a record without one, or with a value that is
    not a number, is bad like a malformed one.

    Records are read unsanitised (users' files may hold charges or valences RDKit would reject;
    only atoms and coordinates are used). A record is bad when it cannot be parsed (truncated,
    malformed), has no 3D coordinates (no conformer, a 2D block, or all atoms at one point), has two
    atoms at the same position, has an
    element outside ``elements`` (symbols, when given) or more than ``max_atoms`` atoms, or - with
    ``require_explicit_h`` - holds no hydrogen atom although its atoms need hydrogens (a file
    written without explicit hydrogens; they would have no coordinates): judged from the file's
    bonds when it has a bond block, else from the distances (so real H-free molecules pass)."""
    from rdkit import Chem, rdBase

    path = Path(path)
    allowed = _norm_elements(elements)
    col = _Collector(path, skip_bad)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    out: list[Molecule] = []
    for k, (line_no, lines) in enumerate(_sdf_records(text), start=1):
        title = lines[0].strip() if lines else ""
        record = f"record {k}" + (f" ({title!r})" if title else "") + f", line {line_no}"
        reason = _v2000_truncation(lines)
        if reason:
            col.bad(record, reason)
            continue
        with rdBase.BlockLogs():
            mol = Chem.MolFromMolBlock("\n".join(lines) + "\n", sanitize=False, removeHs=False, strictParsing=True)
        if mol is None:
            col.bad(record, "malformed mol block (RDKit cannot parse it)")
            continue
        if mol.GetNumConformers() == 0:
            col.bad(record, "no coordinates")
            continue
        conf = mol.GetConformer()
        if not conf.Is3D():
            col.bad(record, "no 3D coordinates (2D mol block)")
            continue
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
        pos = np.asarray(conf.GetPositions(), np.float64).reshape(-1, 3)
        reason = _check_molecule(z, pos, allowed, max_atoms)
        if reason is None and require_explicit_h and not (z == 1).any():
            reason = _implicit_hydrogens(mol) if mol.GetNumBonds() else _missing_hydrogens(z, pos)
        fields = _sd_fields(lines)
        if reason is None:
            reason = next((r for r in (_property_problem(fields, p) for p in properties) if r), None)
        if reason:
            col.bad(record, reason)
            continue
        out.append(Molecule(z, pos, fields, title or f"{path.stem}_{k}"))
    return out, col.skipped


def _implicit_hydrogens(mol) -> str | None:
    """``_skeleton`` for a record with bonds but no hydrogen atom, judged by RDKit's
    implicit-hydrogen count from the file's bonds."""
    from rdkit import Chem

    mol.UpdatePropertyCache(strict=False)
    short = [a.GetIdx() + 1 for a in mol.GetAtoms() if a.GetNumImplicitHs() > 0]
    return _skeleton(short, mol.GetNumAtoms(), len(Chem.GetMolFrags(mol)), "by the file's bonds")


# ------------------------------------------------------------------------------------------------ XYZ

def _parse_symbol(tok: str) -> int | None:
    if tok.isdigit():
        z = int(tok)
        return z if 1 <= z <= len(SYMBOLS) else None
    return ATOMIC_NUMBER.get(tok.capitalize())


def _parse_xyz_coord(tok: str) -> float:
    return float(tok.replace("*^", "e"))  # also Mathematica's "1.2*^-6" (QM9's original files)


def _lone_int(line: str) -> bool:
    t = line.split()
    return len(t) == 1 and t[0].isdigit()


def _load_xyz_file(path: Path, allowed, max_atoms, col: _Collector, require_explicit_h: bool) -> list[Molecule]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    out, i, k = [], 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        k += 1
        head = lines[i].split()
        if len(head) != 1 or not head[0].isdigit() or int(head[0]) == 0:
            col.bad(f"record {k}, line {i + 1}", f"expected the atom count (a positive integer), got {lines[i].strip()!r}")
            i += 1
            while i < len(lines) and not _lone_int(lines[i]):  # resynchronise at the next count line
                i += 1
            continue
        n = int(head[0])
        comment = lines[i + 1].strip() if i + 1 < len(lines) else ""
        name = comment or f"{path.stem}_{k}"
        record = f"record {k}" + (f" ({comment!r})" if comment else "") + f", line {i + 1}"
        body = lines[i + 2:i + 2 + n]
        z, pos, reason, next_i = [], [], None, i + 2 + n
        for j, line in enumerate(body):
            ln = i + 3 + j
            t = line.split()
            if _lone_int(line) or not t:
                reason = (f"the count line declares {n} atoms but only {j} atom lines follow "
                          f"(line {ln} is {'empty' if not t else 'a count line'})")
                next_i = i + 2 + j
                break
            if len(t) < 4:
                reason = f"line {ln}: expected 'symbol x y z', got {line.strip()!r}"
                break
            zi = _parse_symbol(t[0])
            if zi is None:
                reason = f"line {ln}: unknown element {t[0]!r}"
                break
            try:
                xyz = [_parse_xyz_coord(v) for v in t[1:4]]
            except ValueError:
                bad = next(v for v in t[1:4] if not _is_float(v))
                reason = f"line {ln}: coordinate {bad!r} is not a number"
                break
            z.append(zi)
            pos.append(xyz)
        if reason is None and len(body) < n:
            reason = f"truncated: the count line declares {n} atoms but the file ends after {len(body)} atom lines"
        if reason is None:
            pos_a = np.asarray(pos, np.float64).reshape(-1, 3)
            reason = _check_molecule(z, pos_a, allowed, max_atoms)
        if reason is None and require_explicit_h:
            reason = _missing_hydrogens(np.asarray(z, np.int64), pos_a)
        if reason:
            col.bad(record, reason)
        else:
            out.append(Molecule(np.asarray(z), pos_a, {}, name))
        i = next_i
    return out


def _is_float(tok: str) -> bool:
    try:
        _parse_xyz_coord(tok)
        return True
    except ValueError:
        return False


def _files_in(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, or the files of a folder with one of ``suffixes`` (sorted by name)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise InputError(f"{path}: folder holds no {' or '.join(sorted(set(suffixes)))} files")
        return files
    if path.is_file():
        return [path]
    raise InputError(f"{path}: no such file or folder")


def load_xyz(path, elements=None, max_atoms: int | None = None, skip_bad: bool = False,
             require_explicit_h: bool = True) -> tuple[list[Molecule], list[str]]:
    """Molecules from a standard XYZ file (frames of: atom count line, comment line, then one
    ``symbol x y z`` line per atom, Angstrom; extra columns ignored; symbols or atomic numbers), or
    from every ``*.xyz`` file of a folder (sorted by name). A file may hold several frames.
    ``name`` = the comment line, or ``<stem>_<frame>`` when it is empty. Bad frames: wrong or
    missing count line, too few atom lines, unknown element, non-numeric coordinate, element
    outside ``elements``, more than ``max_atoms`` atoms, atoms at the same position, or - with
    ``require_explicit_h`` - no hydrogen atom where the distances say most atoms lack bonds (a file
    written without its hydrogens)."""
    path = Path(path)
    allowed = _norm_elements(elements)
    files = _files_in(path, (".xyz",))
    out, skipped = [], []
    for f in files:
        col = _Collector(f, skip_bad)
        out.extend(_load_xyz_file(f, allowed, max_atoms, col, require_explicit_h))
        skipped.extend(col.skipped)
    return out, skipped


# --------------------------------------------------------------------------------------------- SMILES

def smiles_to_molecules(smiles: list[str], seed: int = 0, processes: int | None = None, names=None,
                        elements=None, max_atoms: int | None = None, skip_bad: bool = False,
                        source: str = "<smiles>", line_numbers=None) -> tuple[list[Molecule], list[str]]:
    """3D molecules with explicit hydrogens from SMILES: RDKit AddHs, ETKDG v3 embedding (random
    seed ``seed`` for every molecule, so a SMILES always gives the same conformer) and MMFF94
    optimisation (UFF where MMFF has no parameters). Work is spread over ``processes`` worker
    processes (default: CPU count, at most one per SMILES; 1 runs in this process); the result
    does not depend on their number. Unparsable or unembeddable SMILES, elements outside
    ``elements`` and molecules above ``max_atoms`` atoms are errors (or skipped with
    ``skip_bad``); messages name ``source``, the record (1-based, or the line from
    ``line_numbers``) and the reason. Properties: ``{"smiles": input}``."""
    smiles = [str(s).strip() for s in smiles]
    allowed = _norm_elements(elements)
    col = _Collector(source, skip_bad)
    jobs = [(s, seed) for s in smiles]
    n_proc = min(processes or os.cpu_count() or 1, max(1, len(jobs)))
    if n_proc <= 1:
        results = [embed_smiles(j) for j in jobs]
    else:
        import multiprocessing as mp

        # fork on Linux (cheap: nothing to re-import, as torch's DataLoader workers do); spawn
        # elsewhere, where the worker function in .chem (no torch import) keeps start-up short.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(n_proc) as pool:
            results = pool.map(embed_smiles, jobs, chunksize=max(1, len(jobs) // (4 * n_proc)))
    out = []
    for k, (smi, (z, pos, reason)) in enumerate(zip(smiles, results)):
        name = names[k] if names is not None and names[k] else smi
        where = f"line {line_numbers[k]}" if line_numbers is not None else f"record {k + 1}"
        record = f"{where} ({name!r})" if name != smi else f"{where}"
        if reason is None:
            reason = _check_molecule(z, pos, allowed, max_atoms)
        if reason:
            col.bad(record, reason if smi in reason else f"{reason} (SMILES {smi!r})")
            continue
        out.append(Molecule(z, pos, {"smiles": smi}, name))
    return out, col.skipped


def load_smiles_file(path, seed: int = 0, processes: int | None = None, elements=None,
                     max_atoms: int | None = None, skip_bad: bool = False) -> tuple[list[Molecule], list[str]]:
    """SMILES file: one SMILES per line, optionally followed by whitespace and a name; blank lines
    and lines starting with '#' are ignored, as is a first line whose first word is 'smiles'
    (a header). Converted with :func:`smiles_to_molecules`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    smiles, names, line_nos = [], [], []
    for i, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(None, 1)
        if not smiles and parts[0].lower() == "smiles":
            continue
        smiles.append(parts[0])
        names.append(parts[1].strip() if len(parts) > 1 else "")
        line_nos.append(i)
    if not smiles and not skip_bad:
        raise InputError(f"{path}: no SMILES in the file")
    return smiles_to_molecules(smiles, seed=seed, processes=processes, names=names, elements=elements,
                               max_atoms=max_atoms, skip_bad=skip_bad, source=str(path), line_numbers=line_nos)


# ---------------------------------------------------------------------------------------- by suffix

SDF_SUFFIXES = (".sdf", ".sd", ".mol")
XYZ_SUFFIXES = (".xyz",)
SMILES_SUFFIXES = (".smi", ".smiles", ".txt")


def load_user_dataset(path, elements=None, max_atoms: int | None = None, skip_bad: bool = False,
                      seed: int = 0, processes: int | None = None, properties=()) -> tuple[list[Molecule], list[str]]:
    """A user's molecules by path: ``.sdf``/``.sd``/``.mol`` (:func:`load_sdf`), ``.xyz``
    (:func:`load_xyz`), ``.smi``/``.smiles``/``.txt`` (:func:`load_smiles_file`, embedded in 3D), or
    a folder: every ``.xyz`` and SDF file in it, sorted by name. Returns (molecules, skipped
    reasons); raises InputError when nothing usable remains.

    ``properties``: per-molecule properties every molecule must carry, read from the SD tags of
    those names (see :func:`load_sdf`); only SDF files hold them, so XYZ and SMILES files are
    refused when properties are asked for."""
    path = Path(path)
    properties = list(properties or ())
    files = _files_in(path, XYZ_SUFFIXES + SDF_SUFFIXES)
    out, skipped = [], []
    for f in files:
        suf = f.suffix.lower()
        if properties and suf not in SDF_SUFFIXES:
            raise InputError(f"{f}: data.properties = {properties} are read from SD tags, and a {suf} file has none; "
                             "give an SDF file whose records carry a tag per property (> <NAME> lines)")
        if suf in SDF_SUFFIXES:
            mols, sk = load_sdf(f, elements, max_atoms, skip_bad, properties=properties)
        elif suf in XYZ_SUFFIXES:
            mols, sk = load_xyz(f, elements, max_atoms, skip_bad)
        elif suf in SMILES_SUFFIXES:
            mols, sk = load_smiles_file(f, seed=seed, processes=processes, elements=elements,
                                        max_atoms=max_atoms, skip_bad=skip_bad)
        else:
            raise InputError(f"{f}: unknown molecule file type {f.suffix!r}: use .sdf, .xyz, .smi/.txt "
                             "(one SMILES per line) or a folder of .xyz/.sdf files")
        out.extend(mols)
        skipped.extend(sk)
    if not out:
        raise InputError(f"{path}: no usable molecules" + (f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""))
    return out, skipped
