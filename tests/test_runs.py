"""fer_train.runs: the one rule that names ensemble members (used by fer-export's manifest and bench/ensemble_subsets)."""
from __future__ import annotations

from pathlib import Path

from fer_train import runs


def test_member_names_tell_snapshots_of_one_run_apart():
    paths = [Path("experiments/r"), Path("experiments/r/best.keras"), Path("x/r/last.keras"),
             Path("x/r/snapshot_1.keras"), Path("x/r/snapshot_2.keras"), Path("x/r/swa.keras"), Path("solo.keras"),
             Path("tmp/other.keras")]
    assert [runs.member_name(p) for p in paths] == ["r", "r", "r", "r/snapshot_1", "r/snapshot_2", "r/swa", "solo", "other"]
    assert runs.snapshot_name(3) == "snapshot_3.keras" and runs.member_name(Path("r") / runs.snapshot_name(3)) == "r/snapshot_3"


def test_only_snapshot_name_files_are_snapshots():
    assert all(runs.is_snapshot(Path("r") / runs.snapshot_name(k)) for k in (1, 2, 12))
    assert not any(runs.is_snapshot(n) for n in ("snapshot_.keras", "snapshot_x.keras", "snapshot_1.h5", "best.keras"))


def test_a_damaged_history_row_is_a_run_error_naming_file_and_line(tmp_path: Path) -> None:
    import pytest

    header = ",".join(runs.HISTORY_FIELDS)
    good = "1,1.2,0.5,1.1,0.55,0.01,10,float32"
    for damaged in ("2,1.1,0.6", "2,1.1,,1.0,0.6,0.01,10,float32", "2,1.1,x,1.0,0.6,0.01,10,float32"):
        (tmp_path / runs.HISTORY).write_text(f"{header}\n{good}\n{damaged}\n")
        with pytest.raises(runs.RunError, match=r"history\.csv:3: damaged row"):
            runs.read_history(tmp_path)
    (tmp_path / runs.HISTORY).write_text(f"{header.replace('val_accuracy', 'val_acc')}\n{good}\n")  # was a KeyError later
    with pytest.raises(runs.RunError, match=r"history\.csv:1: damaged header \(no val_accuracy column\)"):
        runs.read_history(tmp_path)
    (tmp_path / runs.HISTORY).write_text(f"{header}\n{good}\n2,nan,nan,1.0,0.6,0.01,nan,float32\n")  # a rebuilt row
    assert [r["val_accuracy"] for r in runs.read_history(tmp_path)] == [0.55, 0.6]
    (tmp_path / runs.HISTORY).write_bytes(f"{header}\n{good}\n".encode() + b"\xff\xfe\n")  # was a traceback
    with pytest.raises(runs.RunError, match=r"history\.csv: damaged \(not UTF-8 text\)"):
        runs.read_history(tmp_path)


def test_an_ensemble_written_into_itself_adds_members_and_never_lists_itself(tmp_path: Path) -> None:
    import pytest

    from fer_train.ensemble import write_ensemble

    for name in "abc":
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.BEST).write_bytes(b"")
    ens = tmp_path / "ens"
    write_ensemble(ens, [tmp_path / "a", tmp_path / "b"])
    write_ensemble(ens, [ens, tmp_path / "c"])  # "add c to ens": ens's members take its place
    assert [p.resolve() for p in runs.member_paths(ens)] == [(tmp_path / n / runs.BEST).resolve() for n in "abc"]
    with pytest.raises(runs.RunError, match="same member"):  # ens again would count a, b and c twice
        write_ensemble(ens, [ens, tmp_path / "a"])
    with pytest.raises(runs.RunError, match="is a run folder"):  # it would stop being run a
        write_ensemble(tmp_path / "a", [tmp_path / "a", tmp_path / "b"])
    assert [p.resolve() for p in runs.member_paths(tmp_path / "a")] == [(tmp_path / "a" / runs.BEST).resolve()]


def test_a_damaged_or_cyclic_ensemble_json_is_a_run_error_naming_it(tmp_path: Path) -> None:
    import pytest

    for damaged in ('["a"]', '{"members": ["a"]}', '{"members": []}', '{"members": [{"path": 1}]}',
                    '{"members": [{"path": "."}], "data": 3}'):
        (tmp_path / runs.ENSEMBLE).write_text(damaged)
        with pytest.raises(runs.RunError, match=r"ensemble\.json"):
            runs.member_paths(tmp_path)
    (tmp_path / "x").mkdir()  # x lists y, y lists x
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / runs.ENSEMBLE).write_text('{"members": [{"path": "../y"}]}')
    (tmp_path / "y" / runs.ENSEMBLE).write_text('{"members": [{"path": "../x"}]}')
    with pytest.raises(runs.RunError, match="lists itself"):
        runs.member_paths(tmp_path / "x")


def test_a_model_listed_twice_is_refused_by_gather_and_export(tmp_path: Path) -> None:
    import pytest

    from fer_export.errors import ExportError
    from fer_export.members import member_paths

    for name in "ab":
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.BEST).write_bytes(b"")
    ok = [tmp_path / "a", tmp_path / "b" / runs.BEST]
    assert runs.distinct_member_paths(ok) == member_paths(ok) == [tmp_path / "a" / runs.BEST, ok[1]]
    twice = [tmp_path / "a", tmp_path / "b", tmp_path / "b" / ".." / "a" / runs.BEST]
    with pytest.raises(runs.RunError, match="are the same member"):
        runs.distinct_member_paths(twice)
    with pytest.raises(ExportError, match="are the same member"):
        member_paths(twice)
