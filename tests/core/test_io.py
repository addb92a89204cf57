"""Atomic writes: a file appears whole or not at all, with writers that insist on a file name."""

import numpy as np
import pytest

from sciffusion.core.io import atomic_path, atomic_write_text, is_temporary, remove_stale_temporaries


def test_np_save_through_atomic_path_writes_the_target_and_leaves_nothing_behind(tmp_path):
    """np.save appends ".npy" to a name without it: the temporary carries the target's suffix, so
    the data lands in the target and no orphan remains (it used to be a 0-byte target and an
    orphaned .NAME.XXXX.tmp.npy)."""
    target = tmp_path / "array.npy"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".tmp.npy") and is_temporary(tmp)
        np.save(tmp, np.arange(5))
    assert np.array_equal(np.load(target), np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["array.npy"]


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_every_shape_are_removed_and_nothing_else(tmp_path):
    atomic_write_text(tmp_path / "keep.txt", "whole")
    (tmp_path / ".keep.txt.ab12.tmp").write_text("old style")
    (tmp_path / ".a.npy.cd34.tmp.npy").write_text("half")
    (tmp_path / ".folder.ef56.tmp").mkdir()
    (tmp_path / ".hidden").write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "keep.txt"]
