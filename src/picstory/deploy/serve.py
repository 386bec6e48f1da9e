"""`picstory serve RUN`: an HTTP API and an upload page for the one model bundle the server was started with.

Endpoints (no endpoint takes a model path or URL)::

    POST /predict?top_k=5   the image as multipart field ``file``; several as repeated ``files`` (or ``file``)
                            fields; or the raw bytes with ``Content-Type: image/*`` (or application/octet-stream)
        one image  → {"input": name, "predictions": [{"label", "probability"}, ...],
                      "model": {"name", "sha256"}, "latency_ms"}
        several, or any use of the ``files`` field
                   → {"results": [{"input": name, "predictions": [...]}, ...], "model": {...}, "latency_ms"}
    GET  /              the upload page (no external URLs)
    GET  /model         classes, input size, metrics, bundle sha256, picstory version
    GET  /health/live   200 while the process runs
    GET  /health/ready  200 once the model is loaded and warmed, else 503
    GET  /docs          OpenAPI docs (FastAPI's page; it loads swagger assets from a CDN)

Every error is ``{"error": {"code", "message"}}``, a 4xx for the client's mistakes: 400 empty body, 413 body over
``max_body_bytes`` (counted while reading) or image over ``max_pixels`` (from the header), 415 not an image,
422 corrupt image / missing field / bad parameter; 408 when the body takes over ``read_timeout`` seconds to
arrive; 503 + Retry-After when ``max_uploads`` bodies are being received, when ``max_queue`` requests are in flight
or the model is not ready. A request joins the inference queue only once its body is read and its images decoded,
so slow clients hold an upload slot (bounded, timed) and never a queue place. Good images are decoded in a thread
pool and queued; one inference thread runs up to
``max_batch`` of them as one batch (waiting ≤ ``max_wait_ms`` for company). A background thread logs every
prediction to SQLite (picstory.monitor.log).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .._version import __version__
from ..data.decode import DecodeError, ImageInfo, probe
from ..device import cores
from ..errors import UserError
from ..options import PREDICT, SERVE
from .log import Entry, PredictionLog, check_log_path, default_log_path
from .predict import load, preprocess
from .unknown import batch_verdicts, parse_min_confidence, with_min_confidence

DEFAULT_MAX_PIXELS = SERVE.max_pixels  # a 40 MP photo; decoding one takes ~120 MB: the limit bounds memory
EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}
RAW_TYPES = ("image/", "application/octet-stream")
CONFIG_ENV = "PICSTORY_SERVE_CONFIG"  # how serve() hands its options to worker processes
NOT_READY = ("not_ready", "the model is not loaded yet; retry shortly", {"Retry-After": "1"})
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@dataclass
class _Image:
    name: str
    data: bytes
    info: ImageInfo | None = None  # from the header
    tensor: torch.Tensor | None = None


class MicroBatcher:
    """asyncio queue → one inference thread: batches of up to ``max_batch``, waiting ≤ ``max_wait_ms`` to fill."""

    def __init__(self, infer, max_batch: int = 32, max_wait_ms: float = 5.0, busy=lambda: True):
        self.infer, self.max_batch, self.max_wait, self.busy = infer, max_batch, max_wait_ms / 1000, busy
        self.queue: asyncio.Queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="picstory-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def enqueue(self, xs: list[torch.Tensor]) -> list[asyncio.Future]:
        """Queue images at once (no await in between), so a batch sees all of a request's images or none."""
        futures = [asyncio.get_running_loop().create_future() for _ in xs]
        for x, f in zip(xs, futures):
            self.queue.put_nowait((x, f))
        return futures

    async def run_now(self, batch: torch.Tensor) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, batch)

    async def call(self, fn, *args):
        """``fn(*args)`` on the inference thread, between batches: the model is never run from two threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _collect(self) -> list:
        items = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.busy():  # wait only while a request is still on its way here
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return [(x, f) for x, f in items if not f.done()]  # a client that went away is not computed

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            try:
                outcomes = await self.run_now(torch.stack([x for x, _ in items]))
            except Exception as e:  # a failed batch fails its requests, never the worker
                outcomes = [e] * len(items)
            for (_, f), out in zip(items, outcomes):
                if not f.done():
                    f.set_exception(out) if isinstance(out, Exception) else f.set_result(out)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._executor.shutdown(wait=True)  # uvicorn has drained the requests: nothing is left in the queue


class _Service:
    """Everything one app instance owns: the predictor, the batcher, the log and the limits."""

    def __init__(self, target: Any, backend: str, device: str, log_path, store_inputs, store_cap_mb,
                 max_body_bytes: int, max_pixels: int, max_queue: int, max_batch: int, max_wait_ms: float,
                 read_timeout: float = SERVE.read_timeout, max_uploads: int = SERVE.max_uploads):
        self.target, self.backend, self.device = target, backend, device
        self.predictor = None if isinstance(target, (str, Path)) else target
        self.log_args = (log_path, store_inputs, store_cap_mb)
        self.max_body_bytes, self.max_pixels, self.max_queue = max_body_bytes, max_pixels, max_queue
        self.read_timeout, self.max_uploads = read_timeout, max_uploads
        self.batcher = MicroBatcher(lambda x: batch_verdicts(self.predictor, x), max_batch, max_wait_ms,
                                    busy=lambda: self.preparing > 0)
        self.decode_slots = anyio.CapacityLimiter(max(2, cores()))
        self.log, self.ready = None, False
        self.in_flight = 0  # admitted requests: the queue bound
        self.preparing = 0  # requests decoding their images, about to be queued: worth waiting for
        self.uploading = 0  # requests whose body is being received

    def model_ref(self) -> dict:
        return {"name": self.predictor.meta["arch"], "sha256": self.predictor.meta.get("sha256")}

    async def start(self) -> None:
        if self.predictor is None:
            self.predictor = await asyncio.to_thread(load, self.target, self.device, self.backend)
        self.batcher.start()
        c, s = int(self.predictor.meta["in_chans"]), int(self.predictor.meta["img_size"])
        for n in (1, 2):  # first calls allocate and pick kernels; keep that off the first client's clock
            await self.batcher.run_now(torch.zeros(n, c, s, s, dtype=torch.uint8))
        log_path, store, cap = self.log_args
        bundle = getattr(self.predictor, "bundle_dir", None)  # a model without one logs only to a given log_path
        if log_path or bundle is not None:
            self.log = PredictionLog(log_path or default_log_path(bundle), store, cap)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        if self.log is not None:
            self.log.close()

    @contextlib.contextmanager
    def upload(self):
        """A slot for receiving a body: bounded apart from the queue, so slow senders cannot fill the queue."""
        if not self.ready:
            raise ApiError(503, *NOT_READY)
        if self.uploading >= self.max_uploads:
            raise ApiError(503, "too_many_uploads", f"{self.max_uploads} uploads are already being received; "
                           "retry shortly", {"Retry-After": "1"})
        self.uploading += 1
        try:
            yield
        finally:
            self.uploading -= 1

    @contextlib.contextmanager
    def admit(self):
        """A place in the inference queue, taken only with decoded images in hand."""
        if self.in_flight >= self.max_queue:
            raise ApiError(503, "queue_full", f"{self.max_queue} requests are already waiting; retry shortly",
                           {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (Content-Length is only a first check) and
    with 408 when it has not all arrived within ``timeout`` seconds (a whole-body deadline: a client dripping one
    byte at a time never trips an idle timeout)."""
    too_big = ApiError(413, "body_too_large", f"the request body is over the limit of {limit / 2**20:g} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, total = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise too_big
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "read_timeout", f"the request body did not arrive within {timeout:g} s ({total} bytes "
                       "received); send it faster or in one piece", {"Connection": "close"}) from None
    except ClientDisconnect:  # nobody is left to answer; keep it out of the error log
        raise ApiError(400, "client_disconnected", "the client closed the connection mid-body") from None
    return b"".join(chunks)


async def _uploads(request: Request, body: bytes, max_files: int) -> tuple[list[_Image], bool]:
    """(images, several): multipart ``file``/``files`` fields or a raw image body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        raise ApiError(400, "empty_body", "the request has no body; send an image as multipart field 'file'")
    if ctype.startswith(RAW_TYPES):
        return [_Image("body", body)], False
    if ctype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", f"content type {ctype or 'none'!r}: send multipart/form-data "
                       "with field 'file' (or 'files'), or a raw body with an image/* content type")

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=max_files, max_fields=max_files + 16)
    try:
        parts = [(k, v) for k, v in form.multi_items() if k in ("file", "files") and hasattr(v, "read")]
        images = [_Image(v.filename or f"{k}[{i}]", await v.read()) for i, (k, v) in enumerate(parts)]
    finally:
        await form.close()
    if not images:
        fields = ", ".join(sorted(set(form.keys()))) or "none"
        raise ApiError(422, "missing_file", f"no file in field 'file' or 'files' (fields sent: {fields})")
    return images, len(images) > 1 or any(k == "files" for k, _ in parts)


def _decode_error(name: str, reason: str, max_pixels: int) -> ApiError:
    if reason.startswith("too large"):
        return ApiError(413, "too_many_pixels", f"{name}: {reason} is over the limit of {max_pixels:,} pixels")
    if reason == "not an image":
        return ApiError(415, "not_an_image", f"{name}: not an image; send a JPEG, PNG, WebP, GIF, BMP or TIFF file")
    return ApiError(422, "corrupt_image", f"{name}: {reason}")


async def _prepare(service: _Service, img: _Image) -> None:
    """Header first (size, format), so a decompression bomb is refused before any pixel is decoded; then decode."""
    try:
        img.info = probe(img.data, max_pixels=service.max_pixels)
        img.tensor = await anyio.to_thread.run_sync(preprocess, img.data, service.predictor.meta,
                                                    limiter=service.decode_slots)
    except DecodeError as e:
        raise _decode_error(img.name, e.reason, service.max_pixels) from None


def _log(service: _Service, images: list[_Image], preds: list[list[dict]], latency_ms: float,
         verdicts: list[dict] | None = None) -> None:
    if service.log is None:
        return
    keep, model_sha = service.log.store is not None, service.predictor.meta.get("sha256") or ""
    for i, (img, p) in enumerate(zip(images, preds)):
        fmt = img.info.format or "bin"
        unknown = bool(verdicts[i].get("unknown")) if verdicts else None
        service.log.record(Entry(model_sha, hashlib.sha256(img.data).hexdigest(), img.info.width, img.info.height,
                                 p, latency_ms, img.data if keep else None, EXT.get(fmt, fmt.lower()),
                                 unknown=unknown))


async def _explanations(service: _Service, images: list[_Image]) -> list[dict]:
    """Grad-CAM of each image's top-1 class as a PNG overlay (base64), computed on the inference thread."""
    import base64

    from ..evaluation.explain import METHOD, overlay_png

    batch = torch.stack([img.tensor for img in images])
    try:
        heat, cls = await service.batcher.call(service.predictor.explain_tensors, batch)
    except UserError as e:  # ONNX backend, or an architecture without a convolutional feature map
        raise ApiError(422, "cannot_explain", str(e)) from None
    pngs = [overlay_png(img.tensor.permute(1, 2, 0).numpy(), h) for img, h in zip(images, heat)]
    return [{"method": METHOD, "label": service.predictor.classes[int(c)], "layer": service.predictor.explainer_layer,
             "png_base64": base64.b64encode(p).decode("ascii")} for p, c in zip(pngs, cls)]


_BINARY = {"type": "string", "format": "binary"}
PREDICT_DOC = {
    "requestBody": {"required": True, "content": {"image/*": {"schema": _BINARY}, "multipart/form-data": {
        "schema": {"type": "object", "properties": {"file": _BINARY, "files": {"type": "array", "items": _BINARY}}}}}},
    "responses": {str(s): {"description": d, "content": {"application/json": {"example": {
        "error": {"code": c, "message": "…"}}}}} for s, d, c in (
        (400, "empty body", "empty_body"), (413, "body or image too large", "too_many_pixels"),
        (415, "not an image", "not_an_image"), (422, "corrupt image, missing field, bad parameter", "corrupt_image"),
        (503, "queue full or not ready (Retry-After)", "queue_full"))},
}


def _routes(app: FastAPI, service: _Service, page: str) -> None:
    @app.post("/predict", openapi_extra=PREDICT_DOC, summary="Classify one or several images")
    async def predict(request: Request, top_k: int = Query(PREDICT.top_k, ge=1, description="labels per image"),
                      explain: bool = Query(False, description="add a Grad-CAM overlay PNG (base64) per image"),
                      min_confidence: str = Query("", description="unknown below this probability: 0.8 or "
                                                                      "class=0.9,…")) -> Any:
        """One image (field `file` or a raw image/* body) → `{"input", "predictions": [{"label", "probability"}],
        "model": {"name", "sha256"}, "latency_ms"}`; several (`files`) → `{"results": [...], "model", ...}`."""
        start = time.perf_counter()
        thresholds: dict = {}
        if min_confidence and service.predictor is not None:  # not ready yet: the 503 below answers
            if getattr(service.predictor, "multilabel", False):
                raise ApiError(422, "bad_parameter", "min_confidence applies to single-label models; this one "
                                                     "answers every label at or above its tuned threshold")
            try:
                thresholds = parse_min_confidence(min_confidence, service.predictor.classes)
            except UserError as e:
                raise ApiError(422, "bad_parameter", str(e)) from None
        with contextlib.ExitStack() as queued:
            with service.upload():
                body = await _read_body(request, service.max_body_bytes, service.read_timeout)
                images, several = await _uploads(request, body, service.batcher.max_batch)
                service.preparing += 1
                try:
                    await asyncio.gather(*(_prepare(service, img) for img in images))
                    queued.enter_context(service.admit())
                    futures = service.batcher.enqueue([img.tensor for img in images])
                finally:
                    service.preparing -= 1  # queued (or failed): no batch needs to wait for it any more
            scored = await asyncio.gather(*futures)
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        probs = [p for p, _ in scored]
        verdicts = [with_min_confidence(v, p, service.predictor.classes, thresholds) for p, v in scored]
        classes, order = service.predictor.classes, np.argsort(-np.stack(probs), axis=1, kind="stable")[:, :top_k]
        preds = [[{"label": classes[i], "probability": round(float(p[i]), 6)} for i in o] for p, o in zip(probs, order)]
        _log(service, images, preds, latency_ms, verdicts)
        results = [{"input": img.name, **v, "predictions": p} for img, v, p in zip(images, verdicts, preds)]
        if explain:
            for r, e in zip(results, await _explanations(service, images)):
                r["explanation"] = e
        if getattr(service.predictor, "multilabel", False):  # the labels at their thresholds, every probability
            service.predictor.add_label_sets(results, np.stack(probs))
        body_out = {"results": results} if several else results[0]
        return {**body_out, "model": service.model_ref(), "latency_ms": latency_ms}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/health/live", summary="The process is up")
    async def live() -> dict:
        return {"status": "live"}

    @app.get("/health/ready", summary="The model is loaded and warmed (503 before)")
    async def ready() -> Any:
        return {"status": "ready"} if service.ready else _error(503, *NOT_READY)

    @app.get("/model", summary="The served model: classes, input size, metrics, hash, versions")
    async def model() -> Any:
        if not service.ready:
            return _error(503, *NOT_READY)
        m = service.predictor.meta
        return {**service.model_ref(), "classes": service.predictor.classes, "num_classes": len(m["classes"]),
                "in_chans": m["in_chans"], "img_size": m["img_size"], "fit": m.get("fit"),
                "metrics": m.get("metrics", {}), "picstory_version": m.get("picstory_version"),
                "server_version": __version__, "backend": getattr(service.predictor, "backend", service.backend),
                "limits": {"max_body_bytes": service.max_body_bytes, "max_pixels": service.max_pixels,
                           "max_files": service.batcher.max_batch}}


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.code, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(e.status_code, codes.get(e.status_code, f"http_{e.status_code}"), str(e.detail),
                      getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = ["/".join(str(x) for x in err.get("loc", ())[1:]) + f": {err.get('msg')}" for err in e.errors()]
        return _error(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        return _error(500, "internal_error", f"{type(e).__name__}: the server failed on this request")


def create_app(target: str | Path | Any, backend: str = SERVE.backend, log_path: str | Path | None = None,
               store_inputs: str | Path | None = None, max_body_bytes: int = int(SERVE.max_body_mb * 2**20),
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = 64, max_batch: int = 32,
               max_wait_ms: float = 5.0, device: str = SERVE.device, store_cap_mb: float | None = None,
               read_timeout: float = SERVE.read_timeout, max_uploads: int = SERVE.max_uploads) -> FastAPI:
    """The app for ``target``, a run or bundle directory (or a loaded Predictor), loaded and warmed in the lifespan
    start-up (/health/ready is 503 until then). ``log_path`` defaults to RUN/predictions.sqlite; ``store_inputs``
    keeps each input as DIR/<sha256>.<ext>."""
    service = _Service(target, backend, device, log_path, store_inputs, store_cap_mb, max_body_bytes, max_pixels,
                       max_queue, max_batch, max_wait_ms, read_timeout, max_uploads)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="picstory", version=__version__, lifespan=lifespan,
                  description=(__doc__ or "").split("\n\n", 1)[1])
    app.state.service = service  # for tests and embedding apps: limits, queue, log
    _handlers(app)
    _routes(app, service, resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))
    return app


def check_bundle(predictor: Any) -> None:
    """One synthetic image through the decode, preprocess and model a request takes: a bundle whose parts disagree
    (image size, channels, mean/std, class count) is refused at start instead of answering 500 to every request."""
    meta, where = predictor.meta, getattr(predictor, "bundle_dir", None) or getattr(predictor, "source", "the model")
    try:
        probs = predictor.predict_proba(preprocess(np.full((37, 29, 3), 128, np.uint8), meta)[None])
        if probs.shape != (1, len(predictor.classes)):
            raise ValueError(f"the model gives {probs.shape[-1]} scores for {len(predictor.classes)} classes")
    except UserError:
        raise
    except Exception as e:  # anything here would fail every request the same way
        raise UserError(f"{where}: the bundle is inconsistent, refusing to serve it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); export or train it again") from None


def _process_app(target: str | Path, **kw: Any) -> FastAPI:
    """A server process's app. Loading and one trial prediction first make a wrong path or a corrupt or
    inconsistent bundle a one-line error."""
    predictor = load(target, kw.get("device", "cpu"), kw.get("backend", "torch"))
    check_bundle(predictor)
    bundle = getattr(predictor, "bundle_dir", None)
    if kw.get("log_path") or bundle is not None:  # the lifespan opens it again; failing there is a traceback
        check_log_path(kw.get("log_path") or default_log_path(bundle))
    # imports and model are ~270k long-lived objects; left in view, each full collection paused every request
    # for ~120 ms under load (bench/serve_load.py p99). Frozen, the collector only walks per-request garbage.
    gc.collect()
    gc.freeze()
    return create_app(predictor, **kw)


def app_from_env() -> FastAPI:
    """uvicorn factory for ``workers > 1``: each worker process builds its own app from serve()'s options."""
    return _process_app(**json.loads(os.environ[CONFIG_ENV]))


def serve(target: str | Path, host: str = SERVE.host, port: int = SERVE.port, workers: int = SERVE.workers,
          **kw: Any) -> None:
    """Run the server until Ctrl-C / SIGTERM; in-flight requests finish and the log is flushed on the way out."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"picstory serve: listening on {host}: reachable from other machines, with no authentication",
              file=sys.stderr)
    opts = {"host": host, "port": port, "timeout_graceful_shutdown": 30, "log_level": "info"}
    if workers <= 1:
        uvicorn.run(_process_app(target, **kw), **opts)
        return
    check_bundle(load(target, kw.get("device", "cpu"), kw.get("backend", "torch")))  # fail once, not per worker
    os.environ[CONFIG_ENV] = json.dumps({"target": str(target), **{k: str(v) if isinstance(v, Path) else v
                                                                   for k, v in kw.items()}})
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, **opts)
