"""`picstory data check` on small generated folders holding every kind of trouble."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picstory.data.audit import Seen, near_groups
from picstory.errors import DataError
from picstory.pipeline.data_check_run import check


def photo(path: Path, seed: int, size: tuple[int, int] = (80, 60), fmt: str | None = None, **save) -> Path:
    """A distinct smooth random picture: coarse noise scaled up, so no two seeds look alike."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **save)
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = (digest, st.st_size if p.is_file() else 0, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def troubled(tmp_path_factory) -> Path:
    """train/ test/ class folders with every problem data check looks for."""
    root = tmp_path_factory.mktemp("troubled") / "data"
    for i in range(6):
        photo(root / "train" / "cat" / f"{i}.png", seed=i)
        photo(root / "train" / "dog" / f"{i}.jpg", seed=100 + i, quality=92)
    for i in range(2):
        photo(root / "test" / "cat" / f"t{i}.png", seed=200 + i)
        photo(root / "test" / "dog" / f"t{i}.png", seed=300 + i)
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "train" / "cat" / "notes.jpg").write_text("this is not a picture\n")
    jpeg = (root / "train" / "dog" / "0.jpg").read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    shutil.copy(root / "train" / "dog" / "1.jpg", root / "train" / "dog" / "1 copy.jpg")
    big = photo(root / "train" / "cat" / "big.png", seed=400, size=(320, 240))
    Image.open(big).resize((100, 75), Image.Resampling.LANCZOS).save(root / "train" / "cat" / "big small.jpg",
                                                                     quality=90)
    shutil.copy(root / "train" / "cat" / "0.png", root / "test" / "cat" / "leak.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 80×60, shown 60×80
    photo(root / "train" / "dog" / "rotated.jpg", seed=500, exif=exif)
    photo(root / "train" / "cat" / "tmp.jpg", seed=600)
    Image.open(root / "train" / "cat" / "tmp.jpg").convert("CMYK").save(root / "train" / "cat" / "cmyk.jpg")
    (root / "train" / "cat" / "tmp.jpg").unlink()
    deep = (np.linspace(0, 65535, 64 * 48).reshape(48, 64) * np.random.default_rng(7).uniform(0.5, 1, (48, 64)))
    Image.fromarray(deep.astype(np.uint16)).save(root / "train" / "dog" / "deep.png")
    return root


@pytest.fixture(scope="module")
def audited(troubled, tmp_path_factory):
    before = snapshot(troubled)
    out = tmp_path_factory.mktemp("report")
    report = check(str(troubled), out=out, progress=False)
    return report, out, before


def test_report_keys_and_counts(audited):
    report = audited[0]
    for key in ("data", "kind", "classes", "total", "usable", "unusable_reasons", "bad_files", "duplicates",
                "near_duplicates", "leaks", "imbalance_ratio", "sizes", "modes", "channels", "exif_rotated",
                "split_counts", "warnings"):
        assert key in report, key
    assert report["kind"] == "folder"
    # cat: 6 train + big, big small, cmyk + 2 test + leak; dog: 6 train + copy, rotated, deep + 2 test
    assert report["classes"] == {"cat": 12, "dog": 11}
    assert report["total"] == 23
    assert report["split_counts"] == {"train": {"cat": 9, "dog": 9}, "test": {"cat": 3, "dog": 2}}
    assert report["imbalance_ratio"] == pytest.approx(12 / 11, abs=0.01)


def test_bad_files_named_with_reasons(audited):
    bad = {b["path"]: b["reason"] for b in audited[0]["bad_files"]}
    assert bad == {"train/cat/empty.jpg": "empty file", "train/cat/notes.jpg": "not an image",
                   "train/dog/truncated.jpg": "truncated JPEG"}


def test_duplicates_near_duplicates_and_leaks(audited):
    report = audited[0]
    assert sorted(map(sorted, report["duplicates"])) == [["test/cat/leak.png", "train/cat/0.png"],
                                                         ["train/dog/1 copy.jpg", "train/dog/1.jpg"]]
    assert report["near_duplicates"] == [["train/cat/big small.jpg", "train/cat/big.png"]]
    assert len(report["leaks"]) == 1
    leak = report["leaks"][0]
    assert leak["kind"] == "duplicate"
    assert dict(zip(leak["paths"], leak["splits"])) == {"test/cat/leak.png": "test", "train/cat/0.png": "train"}
    assert "1 test image also appears in train" in report["warnings"]
    assert "2 duplicate groups" in report["warnings"]


def test_modes_orientation_and_sizes(audited):
    report = audited[0]
    assert report["exif_rotated"] == 1
    assert report["modes"]["CMYK"] == 1
    assert report["modes"].get("I;16", 0) + report["modes"].get("I", 0) == 1
    assert report["channels"] == {"1": 1, "3": 22}
    sizes = report["sizes"]
    assert (sizes["width"]["min"], sizes["width"]["max"]) == (60, 320)  # the rotated one is 60 wide as shown
    assert (sizes["height"]["min"], sizes["height"]["max"]) == (48, 240)
    hist = sizes["histogram"]
    assert sum(hist["width"]) == sum(hist["height"]) == 23 and len(hist["edges"]) == len(hist["width"]) + 1


def test_too_many_bad_files_is_unusable(audited, troubled):
    report = audited[0]
    assert report["usable"] is False  # 3 bad of 26 files > 5 %
    assert len(report["unusable_reasons"]) == 1 and "3 of 26 files" in report["unusable_reasons"][0]
    relaxed = check(str(troubled), max_bad_fraction=0.2, progress=False)
    assert relaxed["usable"] is True and relaxed["unusable_reasons"] == []


def test_report_files_written(audited):
    report, out, _ = audited
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Not usable" in page and "truncated JPEG" in page and "train/dog/1 copy.jpg" in page
    assert not re.search(r"https?://", page)
    assert page.count("data:image/") >= 12  # samples and the duplicate/leak galleries are embedded
    assert not [p for p in out.iterdir() if p.name not in ("report.json", "report.html")]  # no temp files left


def test_data_untouched(audited, troubled):
    assert snapshot(troubled) == audited[2]


def test_out_inside_data_is_refused(troubled):
    before = snapshot(troubled)
    with pytest.raises(DataError, match="inside the data folder"):
        check(str(troubled), out=troubled / "report", progress=False)
    assert snapshot(troubled) == before


def test_html_escapes_names(tmp_path):
    for label in ("R&D", "<i>tilt"):
        for i in range(3):
            photo(tmp_path / "data" / label / f"<b>{i}.png", seed=hash(label) % 1000 + i)
    report = check(str(tmp_path / "data"), out=tmp_path / "out", progress=False)
    assert report["usable"] and set(report["classes"]) == {"R&D", "<i>tilt"}
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "R&amp;D" in page and "&lt;i&gt;tilt" in page and "&lt;b&gt;0.png" in page
    assert "<i>tilt" not in page and "<b>0.png" not in page
    assert "class 'R&D' has only 3 images" in report["warnings"]


def test_one_class_is_unusable(tmp_path):
    for i in range(4):
        photo(tmp_path / "only" / f"{i}.png", seed=i)
    report = check(str(tmp_path), progress=False)
    assert report["usable"] is False
    assert any("only one class ('only')" in r for r in report["unusable_reasons"])


def test_only_non_images_is_unusable(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "fake" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "fake" / label / f"{i}.jpg").write_text("<html>not an image</html>")
    report = check(str(tmp_path / "fake"), progress=False)
    assert report["usable"] is False and report["total"] == 0
    assert "no readable images" in report["unusable_reasons"]
    assert {b["reason"] for b in report["bad_files"]} == {"not an image"}

    (tmp_path / "text" / "cat").mkdir(parents=True)
    (tmp_path / "text" / "cat" / "readme.txt").write_text("x")
    report = check(str(tmp_path / "text"), out=tmp_path / "out", progress=False)
    assert report["usable"] is False and "no images found" in report["unusable_reasons"][0]
    assert (tmp_path / "out" / "report.html").is_file()


def test_wrong_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        check(str(tmp_path / "missing"), progress=False)


def test_csv_missing_file_is_bad(tmp_path):
    for i in range(3):
        photo(tmp_path / "img" / f"c{i}.png", seed=i)
        photo(tmp_path / "img" / f"d{i}.png", seed=10 + i)
    rows = [f"img/c{i}.png,cat" for i in range(3)] + [f"img/d{i}.png,dog" for i in range(3)] + ["img/gone.png,dog"]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    report = check(str(tmp_path / "labels.csv"), progress=False, max_bad_fraction=0.2)
    assert report["kind"] == "csv" and report["classes"] == {"cat": 3, "dog": 3}
    assert [b["path"] for b in report["bad_files"]] == ["img/gone.png"]
    assert "missing file" in report["bad_files"][0]["reason"] and report["usable"]


def write_idx(path: Path, arr: np.ndarray) -> None:
    data = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data)


def test_idx_duplicates_and_leaks_by_array_hash(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8)
    train[5] = train[2]  # a duplicate inside train
    test = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    test[0] = train[7]  # a test image that is also in train
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12, dtype=np.uint8) % 2)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 0, 1], np.uint8))
    report = check(str(tmp_path), out=tmp_path.parent / "idx-report", progress=False)
    assert report["kind"] == "idx" and report["total"] == 15 and report["usable"]
    assert report["classes"] == {"0": 7, "1": 8}
    assert report["sizes"]["width"] == {"min": 6, "median": 6.0, "max": 6} and report["channels"] == {"1": 15}
    assert len(report["duplicates"]) == 2 and report["near_duplicates"] == []
    assert [leak["splits"] for leak in report["leaks"]] == [["test", "train"]]
    assert "1 test image also appears in train" in report["warnings"]
    assert "data:image/png" in (tmp_path.parent / "idx-report" / "report.html").read_text(encoding="utf-8")


def test_builtin_digits():
    report = check("builtin:digits", progress=False)
    assert report["kind"] == "builtin" and report["total"] == 1797 and report["usable"]
    assert list(report["classes"]) == [str(i) for i in range(10)] and report["modes"] == {"L": 1797}
    assert "split_counts" not in report


def test_process_pool_matches_single_thread(tmp_path):
    for i in range(130):  # enough files that the default takes the process pool
        photo(tmp_path / "data" / ("a" if i % 2 else "b") / f"{i}.png", seed=i, size=(24, 18))
    shutil.copy(tmp_path / "data" / "a" / "1.png", tmp_path / "data" / "b" / "copy.png")
    one = check(str(tmp_path / "data"), workers=1, progress=False)
    pool = check(str(tmp_path / "data"), workers=2, progress=False)
    assert one == pool and one["total"] == 131 and len(one["duplicates"]) == 1


def seen(dhash: int, thumb: np.ndarray, k: int) -> Seen:
    return Seen(bytes([k]), dhash, thumb.astype(np.uint8).tobytes(), 16, 16, "L", 1)


def test_near_groups_need_a_matching_picture_not_only_a_hash():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, (16, 16))
    items = [seen(0b1011, a, 0), seen(0b1010, a + 30, 1),  # a brighter copy: 1 bit apart, same picture
             seen(0b1011, rng.integers(0, 256, (16, 16)), 2),  # same hash, different picture
             seen(~0b1011 & (2**64 - 1), a, 3)]  # same picture, far hash: not a candidate
    by_digest = {s.digest: [i] for i, s in enumerate(items)}
    assert near_groups(list(range(4)), items, by_digest) == [[0, 1]]
