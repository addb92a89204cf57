"""Graphs over batches of molecules stored without padding (PyG-style ``index`` batch vector).

Every function here is plain torch (no pyg-lib / torch-cluster). Edges are returned as
``(row, col)`` long tensors; a message flows from ``col`` (source j) to ``row`` (receiver i), and
networks aggregate at ``row``. Self pairs (i, i) are never included. The order is deterministic:
sorted by ``row`` then by ``col``.

The batch vector ``index`` (num_atoms,) must be sorted (the atoms of one molecule are contiguous),
which is what :class:`sciffusion.core.state.State` guarantees for indexed fields.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest number of candidate pairs whose distances are computed at once by ``radius_edges``
# (4 M pairs: about 48 MB of float32 differences plus a few index tensors).
DEFAULT_MAX_PAIRS = 1 << 22


def _segments(index: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Atoms per molecule (B,) and the first atom of each molecule (B,)."""
    counts = torch.bincount(index, minlength=batch_size)
    starts = torch.cumsum(counts, 0) - counts
    return counts, starts


def _enumerate_blocks(row_start: Tensor, rows: Tensor, col_start: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """All (row, col) pairs of a list of rectangular blocks, block after block, row-major inside.

    Block b covers rows ``row_start[b] .. row_start[b] + rows[b] - 1`` and columns
    ``col_start[b] .. col_start[b] + cols[b] - 1``. Vectorised: no loop over blocks.
    """
    sizes = rows * cols
    total = int(sizes.sum())
    device = rows.device
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    block = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes, output_size=total)
    first = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(total, device=device) - first[block]
    ncols = cols[block]
    row = row_start[block] + torch.div(local, ncols, rounding_mode="floor")
    col = col_start[block] + local % ncols
    return row, col


def fully_connected_edges(index: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """All ordered pairs (i, j), i != j, of atoms of the same molecule.

    Returns ``(row, col)`` with sum_k n_k (n_k - 1) entries, sorted by row then col. Time and memory
    O(sum_k n_k^2); no loop over molecules.
    """
    index = index.long()
    if batch_size is None:
        batch_size = int(index.max()) + 1 if index.numel() else 0
    counts, starts = _segments(index, batch_size)
    # One block per molecule: its rows against its columns, then drop the diagonal.
    row, col = _enumerate_blocks(starts, counts, starts, counts)
    keep = row != col
    return row[keep], col[keep]


def _row_blocks(index: Tensor, batch_size: int, max_pairs: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split every molecule into blocks of consecutive rows so that rows x molecule size <= max_pairs.

    Returns, per block: first row, number of rows, first column (= molecule start), number of
    columns (= molecule size). Small molecules are one block each.
    """
    counts, starts = _segments(index, batch_size)
    nonempty = counts > 0
    counts, starts = counts[nonempty], starts[nonempty]
    rows_per_block = torch.clamp(max_pairs // counts.clamp_min(1), min=1)
    nblocks = torch.div(counts + rows_per_block - 1, rows_per_block, rounding_mode="floor")
    mol = torch.repeat_interleave(torch.arange(len(counts), device=index.device), nblocks)
    first_block = torch.cumsum(nblocks, 0) - nblocks
    k = torch.arange(len(mol), device=index.device) - first_block[mol]
    row_start = starts[mol] + k * rows_per_block[mol]
    rows = torch.minimum(rows_per_block[mol], starts[mol] + counts[mol] - row_start)
    return row_start, rows, starts[mol], counts[mol]


def radius_edges(
    pos: Tensor,
    index: Tensor,
    r: float,
    max_neighbours: int | None = None,
    batch_size: int | None = None,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> tuple[Tensor, Tensor]:
    """Ordered pairs (i, j), i != j, of the same molecule with |pos_i - pos_j| <= r.

    Method: every molecule is cut into blocks of consecutive receiver rows against all atoms of the
    molecule (one block per molecule unless n_k^2 > ``max_pairs``); blocks are grouped into chunks
    of at most about ``max_pairs`` candidate pairs and each chunk's distances are computed at once
    (a chunk of a single block, typical of large molecules, as one dense rows x molecule matrix).
    Work is O(sum_k n_k^2) distance evaluations (never pairs across molecules), peak memory
    O(max_pairs + edges), so a batch of large molecules never builds a num_atoms^2 matrix, nor even
    one n_k^2 matrix for a molecule larger than sqrt(max_pairs). The Python loop runs over chunks
    (one for a typical QM9 batch), not molecules.

    ``max_neighbours``: keep for each receiver only its nearest ``max_neighbours`` sources (ties
    broken by the smaller source index), unlike PyG's arbitrary choice. Output sorted by (row, col).
    Not differentiable (indices only); compute distances on the returned edges.
    """
    if pos.dim() != 2:
        raise ValueError(f"pos must have shape (num_atoms, d), got {tuple(pos.shape)}")
    index = index.long()
    if index.shape[0] != pos.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but pos has {pos.shape[0]} rows")
    if batch_size is None:
        batch_size = int(index.max()) + 1 if index.numel() else 0
    device = pos.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if pos.shape[0] == 0:
        return empty, empty
    pos = pos.detach()
    r2 = float(r) ** 2

    row_start, rows, col_start, cols = _row_blocks(index, batch_size, max_pairs)
    sizes = rows * cols
    # Group consecutive blocks: a block with more than max_pairs / 4 pairs is a chunk of its own;
    # other blocks share a chunk while floor(pairs before them / max_pairs) agrees (<= 1.25 max_pairs).
    before = torch.cumsum(sizes, 0) - sizes
    key = torch.div(before, max_pairs, rounding_mode="floor")
    large = sizes * 4 > max_pairs
    new = torch.ones_like(large)
    if len(new) > 1:
        new[1:] = large[1:] | large[:-1] | (key[1:] != key[:-1])
    chunk = torch.cumsum(new.long(), 0) - 1
    nchunks = int(chunk[-1]) + 1 if len(chunk) else 0
    bounds = torch.searchsorted(chunk, torch.arange(nchunks + 1, device=device)).tolist()

    rows_out, cols_out, d2_out = [], [], []
    for c in range(nchunks):
        a, b = bounds[c], bounds[c + 1]
        if b - a == 1:  # one rectangle (a large molecule): dense differences, no index arithmetic
            rs, nr, cs, nc = (int(v[a]) for v in (row_start, rows, col_start, cols))
            d2_full = (pos[rs : rs + nr, None, :] - pos[None, cs : cs + nc, :]).pow(2).sum(-1)
            i, j = (d2_full <= r2).nonzero(as_tuple=True)
            row, col, d2 = rs + i, cs + j, d2_full[i, j]
            keep = row != col
            row, col, d2 = row[keep], col[keep], d2[keep]
        else:
            row, col = _enumerate_blocks(row_start[a:b], rows[a:b], col_start[a:b], cols[a:b])
            d2 = (pos[row] - pos[col]).pow(2).sum(-1)
            keep = (d2 <= r2) & (row != col)
            row, col, d2 = row[keep], col[keep], d2[keep]
        rows_out.append(row)
        cols_out.append(col)
        d2_out.append(d2)
    if not rows_out:
        return empty, empty
    row, col, d2 = torch.cat(rows_out), torch.cat(cols_out), torch.cat(d2_out)

    if max_neighbours is not None and row.numel():
        # Order by (row, distance, col): stable sorts from the least significant key.
        order = torch.argsort(d2, stable=True)  # col order already ascending inside equal d2
        order = order[torch.argsort(row[order], stable=True)]
        row_s = row[order]
        first = torch.searchsorted(row_s, row_s, right=False)
        rank = torch.arange(len(row_s), device=device) - first
        keep = order[rank < int(max_neighbours)]
        keep = torch.sort(keep).values  # back to (row, col) order
        row, col = row[keep], col[keep]
    return row, col


def brute_force_radius_edges(pos: Tensor, index: Tensor, r: float) -> tuple[Tensor, Tensor]:
    """Reference O(num_atoms^2) implementation (for tests and small inputs)."""
    p = pos.detach()
    d2 = (p[:, None, :] - p[None, :, :]).pow(2).sum(-1)
    same = index[:, None] == index[None, :]
    eye = torch.eye(len(index), dtype=torch.bool, device=pos.device)
    mask = same & ~eye & (d2 <= float(r) ** 2)
    row, col = mask.nonzero(as_tuple=True)
    return row, col
