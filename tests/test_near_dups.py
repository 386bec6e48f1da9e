"""Near duplicates that are near: copies are found, look-alikes on one texture are not, groups never chain."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from picstory.data.audit import star_clusters
from picstory.pipeline.data_check_run import check


def parts_on_one_texture(n: int, seed: int = 0, size: int = 96) -> list[Image.Image]:
    """Different parts (a dark ellipse or box, own size and place) on one shared surface with grid lines."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    surface = 150 + 12 * np.sin(xx / 3.1) * np.cos(yy / 2.3) + np.random.default_rng(99).normal(0, 6, (size, size))
    surface[((yy % 16) < 2) | ((xx % 16) < 2)] = 90
    out = []
    for _ in range(n):
        img = surface + rng.normal(0, 3, (size, size))
        (cy, cx), (ry, rx) = rng.uniform(16, size - 16, 2), rng.uniform(8, 18, 2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if rng.random() < 0.5 else \
            (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        img[mask] = rng.uniform(40, 80)
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def test_look_alike_parts_make_no_groups_and_warn_of_no_leak(tmp_path):
    for k, im in enumerate(parts_on_one_texture(60)):
        folder = tmp_path / "data" / ("train" if k % 3 else "test") / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{k}.png")
    report = check(str(tmp_path / "data"), out=tmp_path / "report", progress=False)
    assert report["near_duplicates"] == [] and report["leaks"] == [] and report["conflicting_labels"] == []
    assert not any("also appear" in w or "different labels" in w for w in report["warnings"])


def test_a_re_encoded_and_a_brightened_copy_are_found(tmp_path):
    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((96, 96),
                                                                                       Image.Resampling.BICUBIC)
              for _ in range(6)]
    for k, im in enumerate(photos):
        (tmp_path / "data" / "train" / "a").mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / "data" / "train" / "a" / f"{k}.png")
    (tmp_path / "data" / "test" / "a").mkdir(parents=True)
    buf = io.BytesIO()
    photos[0].save(buf, "JPEG", quality=70)
    (tmp_path / "data" / "test" / "a" / "0-jpeg.jpg").write_bytes(buf.getvalue())
    bright = np.clip(np.asarray(photos[1]).astype(int) + 25, 0, 255).astype(np.uint8)
    Image.fromarray(bright).save(tmp_path / "data" / "test" / "a" / "1-bright.png")
    report = check(str(tmp_path / "data"), out=tmp_path / "report", progress=False)
    assert sorted(map(sorted, report["near_duplicates"])) == [["test/a/0-jpeg.jpg", "train/a/0.png"],
                                                              ["test/a/1-bright.png", "train/a/1.png"]]
    assert "2 test images also appear (exactly or nearly) in train" in report["warnings"]


def test_groups_do_not_chain_through_look_alikes():
    # 0≈1, 1≈2, 2≈3, 3≈4: a chain, not one picture. Each group holds its representative's own matches only.
    groups = star_clusters(5, np.array([0, 1, 2, 3]), np.array([1, 2, 3, 4]))
    assert groups == [[1, 0, 2], [3, 4]]
    for g in groups:
        assert all(abs(m - g[0]) <= 1 for m in g)
