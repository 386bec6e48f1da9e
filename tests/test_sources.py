"""Every DATA form that picstory.data.sources / split / builtin understand, on tiny generated files."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picstory.data.builtin import FASHION_CLASSES, export_folder, load_builtin
from picstory.data.sources import Record, Source, label_from_name, read_idx, resolve
from picstory.data.split import assign_splits, manifest_csv, read_manifest, split_source
from picstory.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def png(path: Path, value: int = 128, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format="PNG")  # explicit format: odd suffixes
    return path


def class_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for label, n in counts.items():
        for i in range(n):
            png(root / label / f"{i}{ext}", value=i)
    return root


def write_idx(path: Path, arr: np.ndarray) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def idx_pair(root: Path, prefix: str, labels: list[int], gz: bool) -> None:
    suffix = ".gz" if gz else ""
    images = np.arange(len(labels) * 16, dtype=np.uint8).reshape(len(labels), 4, 4)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", np.array(labels, dtype=np.uint8))


def records_of(src: Source) -> dict[str, str]:
    return {src.display_path(r).replace(os.sep, "/"): r.label for r in src.records}


# ---- class folders -----------------------------------------------------------------------------------------------

def test_class_folders_without_splits(tmp_path):
    src = resolve(str(class_tree(tmp_path, {"cat": 3, "dog": 2})))
    assert src.kind == "folder" and src.classes == ["cat", "dog"]
    assert src.class_counts() == {"cat": 3, "dog": 2}
    assert all(r.split is None for r in src.records) and not src.problems
    assert records_of(src)["cat/0.png"] == "cat"


@pytest.mark.parametrize("names,expected", [
    (("train", "val", "test"), ("train", "val", "test")),
    (("training_set", "test_set"), ("train", "test")),
    (("Train", "Validation", "Testing"), ("train", "val", "test")),
])
def test_class_folders_under_split_folders(tmp_path, names, expected):
    for name in names:
        class_tree(tmp_path / name, {"cat": 2, "dog": 1})
    src = resolve(str(tmp_path))
    assert src.classes == ["cat", "dog"]
    by_split = {s: sum(r.split == s for r in src.records) for s in expected}
    assert by_split == {s: 3 for s in expected}


def test_doubled_split_level(tmp_path):
    for split in ("training_set", "test_set"):
        class_tree(tmp_path / split / split, {"cats": 2, "dogs": 2})
    src = resolve(str(tmp_path))
    assert src.classes == ["cats", "dogs"]


def test_extensions_are_case_insensitive(tmp_path):
    png(tmp_path / "cat" / "a.JPG")
    png(tmp_path / "cat" / "b.Png")
    png(tmp_path / "dog" / "c.jpeg")
    png(tmp_path / "dog" / "d.TIFF")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    src = resolve(str(tmp_path))
    assert src.class_counts() == {"cat": 2, "dog": 2}
    assert src.ignored == 1


def test_hidden_and_system_files_are_ignored(tmp_path):
    class_tree(tmp_path, {"cat": 2, "dog": 2})
    png(tmp_path / "cat" / ".hidden.png")
    png(tmp_path / "cat" / "._cat.png")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    png(tmp_path / "__MACOSX" / "cat" / "._0.png")
    png(tmp_path / ".git" / "objects" / "x.png")
    png(tmp_path / "dog" / ".cache" / "x.png")
    src = resolve(str(tmp_path))
    assert src.classes == ["cat", "dog"]
    assert src.class_counts() == {"cat": 2, "dog": 2}


@pytest.mark.timeout(20)
def test_symlink_loop_does_not_hang(tmp_path):
    class_tree(tmp_path, {"cat": 2, "dog": 2})
    os.symlink(".", tmp_path / "cat" / "self")
    os.symlink("../cat", tmp_path / "cat" / "again")
    src = resolve(str(tmp_path))
    assert src.class_counts()["dog"] == 2
    assert src.class_counts()["cat"] >= 2


def test_symlink_to_parent_does_not_relabel_other_classes(tmp_path):
    class_tree(tmp_path, {"cat": 2, "dog": 2})
    os.symlink("..", tmp_path / "cat" / "up")
    assert resolve(str(tmp_path)).class_counts() == {"cat": 2, "dog": 2}


def test_loose_image_next_to_class_folders_is_a_problem(tmp_path):
    class_tree(tmp_path, {"cat": 1, "dog": 1})
    png(tmp_path / "stray.png")
    src = resolve(str(tmp_path))
    assert [Path(p).name for p, _ in src.problems] == ["stray.png"]
    assert src.class_counts() == {"cat": 1, "dog": 1}


def test_labels_with_spaces_and_non_ascii_letters(tmp_path):
    names = ["猫", "größe", "golden retriever"]
    class_tree(tmp_path, {n: 2 for n in names})
    src = resolve(str(tmp_path))
    assert src.classes == sorted(names)
    assert set(src.class_counts().values()) == {2}


def test_class_order_is_sorted_and_stable(tmp_path):
    class_tree(tmp_path, {"zebra": 1, "Ant": 1, "mole": 1, "10": 1, "9": 1})
    first = resolve(str(tmp_path)).classes
    assert first == ["9", "10", "Ant", "mole", "zebra"]  # numbers by value, then names
    assert resolve(str(tmp_path)).classes == first
    assert resolve(str(tmp_path)).records == resolve(str(tmp_path)).records


# ---- labels in file names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,label", [
    ("cat.123.jpg", "cat"), ("dog_7.png", "dog"), ("Cat-01.jpeg", "cat"), ("cat (3).jpg", "cat"),
    ("golden retriever 3.jpg", "golden retriever"), ("猫_1.png", "猫"), ("größe-2.png", "größe"),
    ("1234.jpg", None), ("photo.jpg", None), ("_7.png", None),
])
def test_label_from_name(name, label):
    assert label_from_name(name) == label


@pytest.mark.parametrize("name", ["IMG_1234.jpg", "DSC01234.JPG", "PXL_20230101.jpg"])
def test_camera_names_are_not_labels(name):
    assert label_from_name(name) is None


def test_file_name_labels_and_unlabelled_problem(tmp_path):
    for name in ("cat.123.jpg", "dog_7.png", "Cat-01.jpeg", "dog_8.PNG"):
        png(tmp_path / name)
    png(tmp_path / "holiday.jpg")
    src = resolve(str(tmp_path))
    assert src.kind == "filenames"
    assert records_of(src) == {"cat.123.jpg": "cat", "dog_7.png": "dog", "Cat-01.jpeg": "cat", "dog_8.PNG": "dog"}
    assert [Path(p).name for p, _ in src.problems] == ["holiday.jpg"]
    assert "no label" in src.problems[0][1]


def test_file_name_labels_under_split_folders(tmp_path):
    for split in ("train", "test"):
        for name in ("cat.1.jpg", "cat.2.jpg", "dog.1.jpg"):
            png(tmp_path / split / name)
    src = resolve(str(tmp_path))
    assert src.kind == "filenames"
    assert src.class_counts() == {"cat": 4, "dog": 2}
    assert {r.split for r in src.records} == {"train", "test"}


# ---- CSV ---------------------------------------------------------------------------------------------------------

def csv_data(tmp_path: Path, header: str, rows: list[str]) -> Path:
    for i in range(4):
        png(tmp_path / "img" / f"{i}.png", value=i)
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_csv_auto_detected_columns(tmp_path):
    path = csv_data(tmp_path, "Image,Class", ["img/0.png,cat", "img/1.png,dog", "img/2.png,golden retriever"])
    src = resolve(str(path))
    assert src.kind == "csv" and src.classes == ["cat", "dog", "golden retriever"]
    assert records_of(src) == {"img/0.png": "cat", "img/1.png": "dog", "img/2.png": "golden retriever"}


def test_csv_explicit_columns(tmp_path):
    path = csv_data(tmp_path, "where,what,note", ["img/0.png,cat,x", "img/1.png,dog,y"])
    with pytest.raises(DataError, match="where, what, note"):
        resolve(str(path))  # nothing recognisable: the error lists the columns it saw
    src = resolve(str(path), path_col="where", label_col="what")
    assert src.class_counts() == {"cat": 1, "dog": 1}


def test_csv_missing_named_columns(tmp_path):
    path = csv_data(tmp_path, "path,label", ["img/0.png,cat"])
    with pytest.raises(DataError, match=r"no column 'file'.*path, label"):
        resolve(str(path), path_col="file")
    with pytest.raises(DataError, match=r"no column 'kind'"):
        resolve(str(path), label_col="kind")


def test_csv_split_column_and_missing_file(tmp_path):
    path = csv_data(tmp_path, "path,label,split",
                    ["img/0.png,cat,train", "img/1.png,dog,valid", "img/2.png,cat,test", "img/gone.png,dog,train"])
    src = resolve(str(path))
    assert [r.split for r in src.records] == ["train", "val", "test"]
    assert len(src.problems) == 1
    missing, reason = src.problems[0]
    assert missing.endswith("gone.png") and "missing file" in reason and "row 5" in reason


def test_csv_without_usable_rows(tmp_path):
    path = csv_data(tmp_path, "path,label", ["img/gone.png,cat"])
    with pytest.raises(DataError, match="no usable rows"):
        resolve(str(path))


# ---- IDX files ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_files(tmp_path, gz):
    idx_pair(tmp_path, "train", [0, 1, 2, 1, 0, 10], gz)
    idx_pair(tmp_path, "t10k", [2, 1], gz)
    src = resolve(str(tmp_path))
    assert src.kind == "idx" and src.in_memory
    assert src.arrays.shape == (8, 4, 4) and src.arrays.dtype == np.uint8
    assert src.classes == ["0", "1", "2", "10"]
    assert [r.split for r in src.records] == ["test"] * 2 + ["train"] * 6  # t10k sorts first
    assert src.display_path(src.records[0]).endswith("[0]")
    np.testing.assert_array_equal(read_idx(next(tmp_path.glob("train-images*")))[5],
                                  np.arange(80, 96, dtype=np.uint8).reshape(4, 4))


def test_idx_without_labels_and_corrupt(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="no matching labels"):
        resolve(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01garbage")
    with pytest.raises(DataError, match="not a readable IDX"):
        resolve(str(tmp_path))


# ---- built-in sets -----------------------------------------------------------------------------------------------

def test_builtin_digits():
    src = resolve("builtin:digits")
    assert src.kind == "builtin" and src.classes == [str(i) for i in range(10)]
    assert src.arrays.shape == (1797, 8, 8) and src.arrays.max() == 255
    assert sum(src.class_counts().values()) == 1797


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_builtin_fashion_mnist_system(monkeypatch):
    monkeypatch.delenv("PICSTORY_DATA", raising=False)
    src = resolve("builtin:fashion-mnist")
    assert src.classes == sorted(FASHION_CLASSES)  # names, not the IDX label order
    assert src.arrays.shape == (70000, 28, 28)
    assert {r.split for r in src.records} == {"train", "test"}


def test_builtin_fashion_mnist_from_picstory_data(tmp_path, monkeypatch):
    idx_pair(tmp_path / "fashion-mnist", "train", [0, 9, 3], gz=True)
    idx_pair(tmp_path / "fashion-mnist", "t10k", [9], gz=True)
    monkeypatch.setenv("PICSTORY_DATA", str(tmp_path))
    src = load_builtin("Fashion-MNIST")
    assert src.spec == "builtin:fashion-mnist" and len(src.records) == 4
    assert src.classes == ["Ankle boot", "Dress", "T-shirt-top"]  # labels 9, 3, 0
    assert src.display_path(src.records[0]) == "builtin:fashion-mnist[0]"


def test_builtin_unknown():
    with pytest.raises(DataError, match="unknown built-in.*digits"):
        resolve("builtin:imagenet")


# ---- user mistakes -----------------------------------------------------------------------------------------------

def test_wrong_path(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        resolve(str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        resolve(str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        resolve(str(tmp_path))


def test_single_image_file_is_not_data(tmp_path):
    with pytest.raises(DataError, match="not a data set"):
        resolve(str(png(tmp_path / "cat.1.png")))


# ---- split -------------------------------------------------------------------------------------------------------

def labelled(counts: dict[str, int], split: str | None = None) -> list[Record]:
    return [Record(f"{c}/{i}.png", c, split) for c, n in counts.items() for i in range(n)]


def test_assign_splits_stratified_80_10_10():
    recs = labelled({"a": 50, "b": 30, "c": 20})
    splits = assign_splits(recs, 0.1, 0.1, seed=0)
    for label, n in {"a": 50, "b": 30, "c": 20}.items():
        mine = [s for r, s in zip(recs, splits) if r.label == label]
        assert (mine.count("train"), mine.count("val"), mine.count("test")) == (n * 8 // 10, n // 10, n // 10)


def test_assign_splits_seeded():
    recs = labelled({"a": 40, "b": 40})
    assert assign_splits(recs, seed=3) == assign_splits(recs, seed=3)
    assert assign_splits(recs, seed=3) != assign_splits(recs, seed=4)


def test_val_carved_from_train_when_data_has_train_and_test():
    recs = labelled({"a": 20, "b": 10}, "train") + labelled({"a": 3, "b": 3}, "test")
    splits = assign_splits(recs, 0.1, 0.1, seed=0)
    assert splits[-6:] == ["test"] * 6  # the data's own test split is kept
    train_part = splits[:30]
    assert train_part.count("val") == 3 and "test" not in train_part


def test_test_carved_from_train_when_data_has_no_test():
    recs = labelled({"a": 20}, "train") + labelled({"a": 3}, "val")
    splits = assign_splits(recs, 0.1, 0.1, seed=0)
    assert splits.count("test") == 2 and splits[-3:] == ["val"] * 3


def test_mixed_declared_and_undeclared_records_split_consistently():
    recs = labelled({"a": 10}, "train") + [Record(f"x{i}.png", "a") for i in range(10)]
    sizes = {assign_splits(recs, 0.1, 0.1, seed=s).count("test") for s in range(10)}
    assert len(sizes) == 1


def test_class_too_small_names_the_class():
    recs = labelled({"big": 20, "tiny bird": 2})
    with pytest.raises(DataError, match="class 'tiny bird' has 2 image"):
        assign_splits(recs, 0.4, 0.4, seed=0)


def test_split_source_class_only_in_test(tmp_path):
    recs = labelled({"a": 5, "b": 5}, "train") + labelled({"a": 1, "b": 1, "c": 2}, "test")
    src = Source(spec=str(tmp_path), kind="folder", records=recs, root=tmp_path)
    with pytest.raises(DataError, match=r"class\(es\) c appear only in the test split"):
        split_source(src, 0.1, 0.1, seed=0)


def test_split_source_manifest_round_trip(tmp_path):
    src = resolve(str(class_tree(tmp_path / "data", {"cat": 10, "dog": 10})))
    splits = split_source(src, 0.1, 0.1, seed=1)
    assert sorted(i for idx in splits.values() for i in idx) == list(range(20))
    manifest = tmp_path / "split.csv"
    manifest.write_text(manifest_csv(src, splits))
    assert manifest.read_text().splitlines()[0] == "path_or_index,label,split"
    assert {k: sorted(v) for k, v in read_manifest(manifest, src).items()} == {k: sorted(v) for k, v in splits.items()}


# ---- export ------------------------------------------------------------------------------------------------------

def test_export_folder_reads_back(tmp_path):
    digits = load_builtin("digits")
    subset = Source(spec="builtin:digits", kind="builtin", records=digits.records[:200], arrays=digits.arrays)
    counts = export_folder(subset, tmp_path / "out", test_fraction=0.2, seed=0)
    assert counts == {"train": 160, "test": 40}
    back = resolve(str(tmp_path / "out"))
    assert back.kind == "folder" and back.class_counts() == subset.class_counts()
    assert sum(r.split == "test" for r in back.records) == 40
    first = next(r for r in back.records if Path(r.ref).name == "00000.png")
    np.testing.assert_array_equal(np.asarray(Image.open(first.ref)), digits.arrays[0])
    with pytest.raises(DataError, match="not empty"):
        export_folder(subset, tmp_path / "out")


def test_export_refuses_file_sources(tmp_path):
    src = resolve(str(class_tree(tmp_path / "data", {"cat": 1, "dog": 1})))
    with pytest.raises(DataError, match="already files"):
        export_folder(src, tmp_path / "out")
