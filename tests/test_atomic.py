"""fer_runtime.atomic: a folder replaced in one step."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fer_runtime.atomic import atomic_dir, atomic_write


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "models"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as stage:
        atomic_write(stage / "new.txt", "new")
        assert not (out / "new.txt").exists()  # not visible before the block ends
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "old.txt"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as stage:
            atomic_write(stage / "half.txt", "half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no stage left behind


def test_a_symlinked_folder_is_updated_behind_the_link(tmp_path: Path) -> None:
    """``--out models`` where models -> /data/models: the shared folder gets the new files, the link stays."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "models"
    link.symlink_to(real)
    with atomic_dir(link) as stage:
        atomic_write(stage / "new.txt", "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(p.name for p in real.iterdir()) == ["new.txt", "old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "real"]


def test_the_working_folder_and_its_ancestors_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out .`` would copy all the folder holds and leave the shell in a deleted folder: refused, nothing written."""
    import errno

    from fer_runtime.atomic import check_stageable

    here = tmp_path / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    for path in (".", here, tmp_path):
        for call in (check_stageable, lambda p: atomic_dir(p).__enter__()):
            with pytest.raises(OSError) as e:
                call(path)
            assert e.value.errno == errno.EBUSY and "working folder" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and os.listdir(here) == ["notes.txt"]
    check_stageable("models")  # a subfolder is fine
    with atomic_dir("models") as stage:
        atomic_write(stage / "m.txt", "m")
    assert (here / "models" / "m.txt").read_text() == "m"
