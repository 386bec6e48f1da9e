"""Slow clients cannot starve the server: a body is read (with a deadline, in a bounded number of upload slots)
and decoded before its request takes a place in the inference queue. A live uvicorn on loopback, raw sockets."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from test_serve import image, make_run, running_server


def slow_client(port: int, results: list, body_len: int = 400, gap: float = 0.5, limit: float = 30.0) -> None:
    """Headers at once, then one body byte every ``gap`` seconds until the server answers; records the status."""
    status = "no answer"
    with socket.create_connection(("127.0.0.1", port), timeout=gap) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  f"Content-Length: {body_len}\r\n\r\n".encode())
        deadline, sent = time.monotonic() + limit, 0
        while time.monotonic() < deadline:
            try:
                head = s.recv(4096)
                status = head.split(b" ", 2)[1].decode() if head else "closed"
                break
            except TimeoutError:
                if sent < body_len:
                    s.sendall(b"x")
                    sent += 1
            except OSError:
                status = "closed"
                break
    results.append(status)


def swarm(port: int, n: int, **kw) -> tuple[list[threading.Thread], list]:
    results: list = []
    threads = [threading.Thread(target=slow_client, args=(port, results), kwargs=kw, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_a_slow_swarm_does_not_starve_normal_clients(tmp_path):
    run = make_run(tmp_path / "run")
    # 12 drippers against a queue of 4: before the fix each took a queue place on arrival, and every normal
    # request was a 503 until they finished
    with running_server(run, tmp_path / "log.sqlite", tmp_path / "out.txt", max_queue=4, max_uploads=32,
                        read_timeout=2.0) as url:
        port = int(url.rsplit(":", 1)[1])
        threads, slow = swarm(port, 12)
        time.sleep(0.5)  # every dripper is connected and has started its body
        with httpx.Client(base_url=url, timeout=30) as c, ThreadPoolExecutor(4) as pool:
            files = [{"file": (f"{i}.png", image(i), "image/png")} for i in range(16)]
            codes = list(pool.map(lambda f: c.post("/predict", files=f).status_code, files))
        for t in threads:
            t.join(40)
    assert codes == [200] * 16
    assert slow == ["408"] * 12  # each dripper is cut off at the read deadline with a JSON 408


def test_uploads_beyond_the_cap_get_503_with_retry_after(tmp_path):
    run = make_run(tmp_path / "run")
    with running_server(run, tmp_path / "log.sqlite", tmp_path / "out.txt", max_uploads=2, read_timeout=3.0) as url:
        port = int(url.rsplit(":", 1)[1])
        threads, slow = swarm(port, 2)
        time.sleep(0.7)
        r = httpx.post(f"{url}/predict", content=image(1), headers={"content-type": "image/png"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_uploads"
        assert r.headers["retry-after"] == "1"
        for t in threads:
            t.join(40)
        r = httpx.post(f"{url}/predict", content=image(1), headers={"content-type": "image/png"}, timeout=30)
        assert r.status_code == 200  # the slots are free again once the drippers timed out
        r = httpx.post(f"{url}/predict", content=b"", headers={"content-type": "image/png"}, timeout=30)
        assert r.status_code == 400
    assert slow == ["408", "408"]
