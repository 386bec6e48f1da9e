"""The HTTP server: answers match the Predictor, every bad input is a 4xx JSON body, limits hold, every prediction
is logged. Most tests use FastAPI's TestClient; one starts a real uvicorn process on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagegen import jpeg_bytes, noise, png_bytes, png_header_only
from picstory.deploy.predict import load
from picstory.deploy.serve import create_app
from picstory.models import create_model
from picstory.models.bundle import save_bundle

CLASSES = ["ant", "bee", "cat"]


def make_run(root: Path) -> Path:
    """A run directory holding only model/: an untrained 3-class seed CNN on 28 px grey images."""
    model = create_model("seed-mnist-cnn", len(CLASSES), 1, img_size=28)
    save_bundle(root / "model", model, {"arch": "seed-mnist-cnn", "model_kwargs": {}, "num_classes": len(CLASSES),
                                        "classes": CLASSES, "in_chans": 1, "img_size": 28, "fit": "crop",
                                        "mean": [0.5], "std": [0.25], "data": "test", "data_fingerprint": "x",
                                        "metrics": {"test_accuracy": 0.5}})
    return root


def image(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    return png_bytes(Image.fromarray(noise(size[1], size[0], 1, seed=seed)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run: Path, log: Path, out: Path, **kw):
    """A real `serve()` in a subprocess on a free loopback port; yields its base URL, stops it gracefully."""
    port = free_port()
    args = {"port": port, "log_path": str(log), **kw}
    code = f"from picstory.deploy.serve import serve; serve({str(run)!r}, **{args!r})"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited: {out.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"server never became ready: {out.read_text()[-2000:]}"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: finish requests, run lifespan shutdown
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_rows(path: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        return con.execute("SELECT input_sha256, top1_label, top1_prob, topk_json, width, height, stored_path "
                           "FROM predictions ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def reference(run):
    return load(run)


@pytest.fixture
def client(run, tmp_path):
    with TestClient(create_app(run, log_path=tmp_path / "log.sqlite")) as c:
        yield c


def expect_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = response.json()["error"]
    assert err["code"] == code and err["message"]
    return err


def test_ready_only_after_the_model_is_loaded(run, tmp_path):
    app = create_app(run, log_path=tmp_path / "log.sqlite")
    before = TestClient(app)  # no lifespan: nothing loaded yet
    assert before.get("/health/live").status_code == 200
    expect_error(before.get("/health/ready"), 503, "not_ready")
    expect_error(before.post("/predict", content=image(0), headers={"content-type": "image/png"}), 503, "not_ready")
    with TestClient(app) as after:
        assert after.get("/health/ready").json() == {"status": "ready"}


def test_one_image_matches_the_predictor(client, reference):
    r = client.post("/predict", files={"file": ("a.png", image(1), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    want = reference.predict([image(1)], top_k=3)[0]["predictions"]
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in want]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx([p["probability"] for p in want],
                                                                            abs=1e-5)
    assert body["model"] == {"name": "seed-mnist-cnn", "sha256": reference.meta["sha256"]}
    assert body["latency_ms"] > 0 and body["input"] == "a.png"


def test_several_images_keep_their_order(client, reference):
    files = [("files", (f"{i}.png", image(i, (30 + i, 28)), "image/png")) for i in range(4)]
    r = client.post("/predict?top_k=1", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["input"] for x in results] == [f"{i}.png" for i in range(4)]
    want = reference.predict([image(i, (30 + i, 28)) for i in range(4)], top_k=1)
    for got, ref in zip(results, want):
        assert got["predictions"][0]["label"] == ref["predictions"][0]["label"]
        assert got["predictions"][0]["probability"] == pytest.approx(ref["predictions"][0]["probability"], abs=1e-5)


def test_raw_body_and_top_k(client):
    multipart = client.post("/predict", files={"file": ("x.png", image(2), "image/png")}).json()
    raw = client.post("/predict?top_k=2", content=image(2), headers={"content-type": "image/png"}).json()
    assert len(raw["predictions"]) == 2 and raw["predictions"] == multipart["predictions"][:2]
    assert len(multipart["predictions"]) == 3  # top_k 5 is clipped to the 3 classes
    expect_error(client.post("/predict?top_k=0", content=image(2), headers={"content-type": "image/png"}),
                 422, "invalid_parameter")
    expect_error(client.post("/predict?top_k=many", content=image(2), headers={"content-type": "image/png"}),
                 422, "invalid_parameter")


def test_model_endpoint(client, reference):
    info = client.get("/model").json()
    assert info["classes"] == CLASSES and info["img_size"] == 28 and info["in_chans"] == 1
    assert info["sha256"] == reference.meta["sha256"] and info["picstory_version"]
    assert info["metrics"] == {"test_accuracy": 0.5}


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert re.findall(r"https?://", r.text) == []
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert 'type="file"' in r.text and "predict" in r.text


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(noise(64, 64, 3, seed=3))
    return data[: len(data) // 2]


BAD_INPUTS = {
    "empty body": (dict(content=b"", headers={"content-type": "image/png"}), 400, "empty_body"),
    "text file": (dict(files={"file": ("notes.txt", b"just some text\n" * 20, "text/plain")}), 415, "not_an_image"),
    "text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
    "truncated JPEG": (dict(files={"file": ("cut.jpg", truncated_jpeg(), "image/jpeg")}), 422, "corrupt_image"),
    "30000x30000 header": (dict(content=png_header_only(30000, 30000), headers={"content-type": "image/png"}),
                           413, "too_many_pixels"),
    "wrong field name": (dict(files={"image": ("a.png", image(0), "image/png")}), 422, "missing_file"),
    "empty file part": (dict(files={"file": ("a.png", b"", "image/png")}), 422, "corrupt_image"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_and_the_next_request_works(client, case):
    kwargs, status, code = BAD_INPUTS[case]
    err = expect_error(client.post("/predict", **kwargs), status, code)
    if case == "truncated JPEG":
        assert "truncated" in err["message"]
    if case == "30000x30000 header":
        assert "30000×30000" in err["message"]
    assert client.post("/predict", content=image(5), headers={"content-type": "image/png"}).status_code == 200


def test_body_limit_is_enforced_while_reading(run, tmp_path):
    big = png_bytes(Image.fromarray(noise(64, 64, 1, seed=9)))  # noise does not compress: > 4 KB
    with TestClient(create_app(run, log_path=tmp_path / "log.sqlite", max_body_bytes=2048)) as c:
        expect_error(c.post("/predict", content=big, headers={"content-type": "image/png"}), 413, "body_too_large")

        def chunks():  # no Content-Length: only counting the bytes read can catch it
            for i in range(0, len(big), 512):
                yield big[i:i + 512]

        expect_error(c.post("/predict", content=chunks(), headers={"content-type": "image/png"}),
                     413, "body_too_large")
        assert c.post("/predict", content=image(1, (20, 20)), headers={"content-type": "image/png"}).status_code == 200


class SlowPredictor:
    """A test double around a real Predictor: once armed, inference waits until the test opens the gate."""

    def __init__(self, inner):
        self.inner, self.meta, self.classes, self.bundle_dir = inner, inner.meta, inner.classes, None
        self.armed, self.entered, self.gate = False, threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def predict_proba(self, x):
        self.sizes.append(x.shape[0])
        if self.armed and not self.gate.is_set():
            self.entered.set()
            self.gate.wait(60)
        return self.inner.predict_proba(x)


def test_full_queue_answers_503_at_once(reference):
    slow = SlowPredictor(reference)
    with TestClient(create_app(slow, max_queue=1)) as c:
        slow.armed = True
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(
            r=c.post("/predict", content=image(0), headers={"content-type": "image/png"})))
        worker.start()
        assert slow.entered.wait(60)
        r = c.post("/predict", content=image(1), headers={"content-type": "image/png"})
        expect_error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "1"
        slow.gate.set()
        worker.join(60)
        assert first["r"].status_code == 200
        assert c.post("/predict", content=image(1), headers={"content-type": "image/png"}).status_code == 200


def test_requests_waiting_for_the_model_run_as_one_batch(reference):
    slow = SlowPredictor(reference)
    with TestClient(create_app(slow)) as c:
        queue = c.app.state.service.batcher.queue
        slow.armed = True
        codes: list[int] = []

        def send(i: int) -> None:
            codes.append(c.post("/predict", content=image(i), headers={"content-type": "image/png"}).status_code)

        workers = [threading.Thread(target=send, args=(0,))]
        workers[0].start()
        assert slow.entered.wait(60)  # the model is busy with the first image …
        workers += [threading.Thread(target=send, args=(i,)) for i in range(1, 6)]
        for w in workers[1:]:
            w.start()
        deadline = time.monotonic() + 60
        while queue.qsize() < 5:  # … while five more queue up behind it
            assert time.monotonic() < deadline, "requests never reached the queue"
            time.sleep(0.01)
        slow.gate.set()
        for w in workers:
            w.join(60)
        assert codes == [200] * 6 and slow.sizes[-2:] == [1, 5]


def test_every_prediction_is_logged_and_inputs_stored(run, tmp_path):
    log, store = tmp_path / "log.sqlite", tmp_path / "inputs"
    with TestClient(create_app(run, log_path=log, store_inputs=store)) as c:
        c.post("/predict", files=[("files", (f"{i}.png", image(i), "image/png")) for i in range(3)])
        c.post("/predict", content=image(0), headers={"content-type": "image/png"})
        c.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
    rows = log_rows(log)  # leaving the client ran the shutdown, which flushes the log
    assert len(rows) == 4
    sha, label, prob, topk, width, height, stored = rows[0]
    assert (width, height) == (40, 32) and label in CLASSES and json.loads(topk)[0]["probability"] == prob
    assert Path(stored).read_bytes() == image(0) and Path(stored).name == f"{sha}.png"
    assert rows[3][0] == sha and len({r[6] for r in rows}) == 3  # the repeated image is stored once


def test_real_server_survives_a_burst(run, tmp_path):
    log = tmp_path / "burst.sqlite"
    with running_server(run, log, tmp_path / "server.out") as url:
        r = httpx.post(f"{url}/predict", files={"file": ("a.png", image(0), "image/png")}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in CLASSES

        def send(i: int) -> int:
            return httpx.post(f"{url}/predict", content=image(i % 7), headers={"content-type": "image/png"},
                              timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, range(200)))
        assert statuses == [200] * 200
    assert len(log_rows(log)) == 201
