"""Loaders on committed real rows, and every kind of malformed file."""
from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_train.data import (DataFormatError, load_course_test, load_course_train, load_image_folders,
                            load_kaggle_csv, load_source, stratified_split)

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"


@pytest.fixture(scope="module")
def rows() -> list[str]:
    return gzip.decompress(FIX.read_bytes()).decode().splitlines()


def test_kaggle_fixture_splits_and_first_pixels(rows):
    src = load_kaggle_csv(FIX)
    assert (len(src["Training"]), len(src["PublicTest"]), len(src["PrivateTest"])) == (280, 70, 70)
    assert src["train"] is src["Training"] and src["val"] is src["PublicTest"]
    assert src.validation == "PublicTest" and src.fixed_validation
    tr = src["Training"]
    assert tr.x.shape == (280, 48, 48, 1) and tr.x.dtype == np.uint8
    assert np.bincount(tr.y, minlength=7).tolist() == [40] * 7
    first = rows[1].split(",")
    assert tr.y[0] == int(first[0])
    assert tr.x[0].ravel().tolist() == [int(v) for v in first[1].split()]


def test_plain_csv_and_gz_agree(tmp_path, rows):
    p = tmp_path / "fer2013.csv"
    p.write_text("\n".join(rows) + "\n")
    a, b = load_source(p), load_source(FIX)
    assert np.array_equal(a["PrivateTest"].x, b["PrivateTest"].x)
    assert np.array_equal(a["PrivateTest"].y, b["PrivateTest"].y)


def _write(tmp_path: Path, lines: list[str], name: str = "bad.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("mutate, reason", [
    (lambda e, px, u: f"{e},{' '.join(px[:-1])},{u}", "expected 2304 pixel values, found 2303"),
    (lambda e, px, u: f"{e},{' '.join(px[:5] + ['12x'] + px[6:])},{u}", "non-numeric pixel value '12x'"),
    (lambda e, px, u: f"{e},{' '.join(px[:5] + ['300'] + px[6:])},{u}", "outside 0..255"),
    (lambda e, px, u: f"9,{' '.join(px)},{u}", "unknown label '9'"),
    (lambda e, px, u: f"{e},{' '.join(px[:5] + ['²'] + px[6:])},{u}", "non-numeric pixel value '²'"),  # isdigit()
    (lambda e, px, u: f"²,{' '.join(px)},{u}", "unknown label '²'"),
    (lambda e, px, u: f"{e},{' '.join(px)},Holdout", "unknown Usage 'Holdout'"),
    (lambda e, px, u: f"{e},{' '.join(px)}", "expected 3 fields, found 2"),
])
def test_malformed_row_names_file_line_reason(tmp_path, rows, mutate, reason):
    e, px, u = rows[3].split(",")
    lines = rows[:3] + [mutate(e, px.split(), u)] + rows[4:10]
    p = _write(tmp_path, lines)
    with pytest.raises(DataFormatError) as ei:
        load_kaggle_csv(p)
    msg = str(ei.value)
    assert f"{p}:4:" in msg and reason in msg


@pytest.mark.parametrize("after, reason", [
    (6, "expected 3 fields, found 2"),  # the quoted field runs to the end of the file
    (36, "field larger than field limit"),  # past csv's 131,072-character limit: was a traceback
])
def test_an_unclosed_quote_names_the_line_it_opens_on(tmp_path, rows, after, reason):
    e, px, u = rows[3].split(",")
    p = _write(tmp_path, rows[:3] + [f'{e},"{px},{u}'] + rows[4:4 + after])
    with pytest.raises(DataFormatError) as ei:
        load_kaggle_csv(p)
    assert f"{p}:4:" in str(ei.value) and reason in str(ei.value)


def test_empty_truncated_and_header_only_files(tmp_path, rows):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        load_source(empty)
    head = _write(tmp_path, rows[:1], "head.csv")
    with pytest.raises(DataFormatError, match="no data rows"):
        load_kaggle_csv(head)
    trunc = tmp_path / "trunc.csv.gz"
    trunc.write_bytes(FIX.read_bytes()[: len(FIX.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match="trunc.csv.gz"):
        load_kaggle_csv(trunc)
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(rows[:5]) + "\n" + rows[5][:1000])  # last row cut mid-pixels, no newline
    with pytest.raises(DataFormatError, match=r"cut.csv:6:"):
        load_kaggle_csv(cut)
    with pytest.raises(DataFormatError, match="not found"):
        load_source(tmp_path / "nope.csv")


def test_course_layout_and_stratified_split(tmp_path, rows):
    data = [r.split(",") for r in rows[1:]]
    train = _write(tmp_path, ["label,feature"] + [f"{e},{px}" for e, px, _ in data], "train.csv")
    test = _write(tmp_path, ["id,feature"] + [f"{i},{px}" for i, (_, px, _) in enumerate(data[:20])], "test.csv")
    src = load_source(train, validate=0.1, seed=1234)
    assert src.layout == "course" and len(src["train"]) + len(src["val"]) == len(data)
    # stratified: every class keeps its share in validation
    counts_all = np.bincount(src["all"].y, minlength=7)
    counts_val = np.bincount(src["val"].y, minlength=7)
    assert np.all(np.abs(counts_val - np.round(counts_all * 0.1)) <= 1)
    assert not set(src["train"].ids) & set(src["val"].ids)
    assert not src.fixed_validation  # drawn by seed: another seed draws other rows
    again = load_course_train(train, 0.1, 1234)
    assert np.array_equal(again["val"].ids, src["val"].ids)
    other = load_course_train(train, 0.1, 99)
    assert not np.array_equal(other["val"].ids, src["val"].ids)
    t = load_course_test(test)
    assert t.ids.tolist() == list(range(20)) and (t.y == -1).all()
    with pytest.raises(DataFormatError, match="unlabelled test.csv"):
        load_source(test)


def test_image_folders_by_name_and_index(tmp_path):
    src = load_kaggle_csv(FIX)["Training"]
    for i in range(len(src)):
        d = tmp_path / ("happy" if src.y[i] == 3 else str(src.y[i]))
        d.mkdir(exist_ok=True)
        img = src.x[i, :, :, 0]
        if i == 0:
            img = cv2.resize(img, (96, 96))  # other sizes are resized to 48x48
        cv2.imwrite(str(d / f"{i}.png"), img)
    ds = load_image_folders(tmp_path, validate=0.1, seed=1234)
    assert len(ds["train"]) + len(ds["val"]) == len(src)
    allx = ds["all"]
    assert allx.x.shape[1:] == (48, 48, 1)
    assert np.bincount(allx.y, minlength=7).tolist() == np.bincount(src.y, minlength=7).tolist()
    (tmp_path / "contempt").mkdir()
    with pytest.raises(DataFormatError, match="unknown label 'contempt'"):
        load_image_folders(tmp_path)


def test_corrupt_image_in_folder_is_named(tmp_path):
    (tmp_path / "sad").mkdir()
    (tmp_path / "sad" / "broken.png").write_text("not an image")
    with pytest.raises(DataFormatError, match="broken.png: not a readable image"):
        load_image_folders(tmp_path)


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        stratified_split(np.zeros(10, int), 1.5, 0)


def test_image_folders_with_train_and_test(tmp_path):
    """The Kaggle image release: train/<class>/ is split for validation, test/<class>/ becomes the test split."""
    data = load_kaggle_csv(FIX)
    for part, split in (("train", data["Training"]), ("test", data["PublicTest"])):
        for i in range(len(split)):
            d = tmp_path / part / str(int(split.y[i]))
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i:04d}.png"), split.x[i, :, :, 0])
    ds = load_image_folders(tmp_path, validate=0.2, seed=3)
    assert set(ds.splits) >= {"train", "val", "test"}
    assert len(ds["train"]) + len(ds["val"]) == len(data["Training"])
    assert abs(len(ds["val"]) - 0.2 * len(data["Training"])) <= 7  # stratified: rounding per class
    test = ds["test"]
    assert len(test) == len(data["PublicTest"])
    assert np.bincount(test.y, minlength=7).tolist() == np.bincount(data["PublicTest"].y, minlength=7).tolist()
    # the same pixels come back: files are read in name order within each class folder
    order = np.concatenate([np.flatnonzero(data["PublicTest"].y == c) for c in range(7)])
    np.testing.assert_array_equal(test.x, data["PublicTest"].x[order])
    assert load_source(tmp_path, 0.2, 3)["test"].x.shape == test.x.shape  # load_source finds the layout itself


def test_a_quoted_header_is_recognised_as_the_loaders_read_it(tmp_path):
    """load_source detects the layout from the header row, which may be quoted like any CSV field."""
    import gzip

    from fer_train.data import load_source

    lines = gzip.decompress(FIX.read_bytes()).decode().splitlines()
    quoted = tmp_path / "fer2013.csv"
    quoted.write_text('"emotion","pixels","Usage"\n' + "\n".join(lines[1:]) + "\n")
    a, b = load_source(FIX), load_source(quoted)
    assert len(b["train"]) == len(a["train"]) > 0 and np.array_equal(b["train"].x, a["train"].x)
