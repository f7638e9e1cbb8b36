"""The FastAPI application: JSON API under /v1, health check, OpenAPI document and the page.

Stateless: each request's uploads live in memory only while it is answered. Request bodies are
buffered by BodyLimitMiddleware (413 above the limit), so multipart parts never spill to disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from bloodmnist import __version__
from bloodmnist.serving.batching import Batcher
from bloodmnist.serving.limits import BodyLimitMiddleware, Limits
from bloodmnist.serving.model_service import ModelService
from bloodmnist.serving.pipeline import (
    RequestError,
    Upload,
    check_uploads,
    classify,
    decode_all,
    resolve_target,
)

STATIC = Path(__file__).with_name("static")
Preprocess = Literal["auto", "medmnist", "resize", "none"]
#: Every error body: {"detail": "one line"} (FastAPI's own 422 list is rewritten to one line)
_ONE_LINE = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {"detail": {"type": "string"}},
            "required": ["detail"],
        }
    }
}
_ERRORS = {
    code: {"description": text, "content": _ONE_LINE}
    for code, text in {
        413: "request, file count or image pixels above the limits",
        415: "not multipart/form-data, or a part that is not an image",
        422: "invalid parameters or no files",
        503: "the request took longer than the per-request timeout",
    }.items()
}
#: The page loads nothing from elsewhere; results are shown from data: URLs.
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'"


def require_multipart(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(
            415,
            "send multipart/form-data with image files in the field 'files' (got "
            f"{ctype or 'no Content-Type'})",
        )


def create_app(service: ModelService, limits: Limits, max_batch: int = 64) -> FastAPI:
    # Parts stay in memory: the body is already bounded by max_request_bytes (see middleware).
    MultiPartParser.spool_max_size = limits.max_request_bytes + 1
    batcher = Batcher(service.engine, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="bloodmnist",
        version=__version__,
        description="Classify blood-cell images and show Grad-CAM heat maps.",
        lifespan=lifespan,
        # Starlette's form parser stops at 1000 files with a 400 of its own; one above the
        # limit lets check_uploads answer 413 with the limit, however high --max-files is
        form_limits={"max_files": limits.max_files + 1},
    )
    app.add_middleware(
        BodyLimitMiddleware, limit=limits.max_request_bytes, timeout=limits.upload_timeout_s
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.service, app.state.limits, app.state.batcher = service, limits, batcher

    _service_routes(app, service, limits, batcher, max_batch)
    _classify_routes(app, service, limits, batcher)
    return app


def _service_routes(
    app: FastAPI, service: ModelService, limits: Limits, batcher: Batcher, max_batch: int
) -> None:
    """The page, the error handler, health and model description."""

    @app.exception_handler(RequestError)
    async def _refused(_request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc.errors())}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict:
        return {"status": "ok", "forward_passes": batcher.passes}

    @app.get("/v1/model", tags=["service"])
    async def model() -> dict:
        return {**service.describe(), "max_batch": max_batch, "limits": limits.describe()}


def _one_line(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors (a list of objects) as the one line every error body has:
    "query top_k: Input should be greater than or equal to 1"."""
    said = []
    for error in errors:
        where = " ".join(str(part) for part in error.get("loc", ()))
        said.append(" ".join(f"{where}: {error.get('msg', 'not valid')}".split()))
    return "; ".join(said) or "the request is not valid"


async def _classify(
    service: ModelService,
    limits: Limits,
    batcher: Batcher,
    files: list[UploadFile],
    options: tuple[int, bool, str, str | None],
) -> dict:
    """One /v1/predict or /v1/explain request: checked, decoded off the event loop, classified
    through the batcher, explained when `target` is given, all within the per-request limit."""
    top_k, tta, preprocess, target = options
    names = service.engine.info.class_names
    if top_k > len(names):
        raise RequestError(422, f"top_k must be between 1 and {len(names)}")
    if tta and not service.engine.supports_tta:
        raise RequestError(
            422, "tta=true needs a PyTorch model or an ONNX file exported with --tta"
        )
    # a --tta graph answers every request with its views: one flag, one batch queue
    tta = tta or service.engine.info.tta_baked is not None
    wanted = resolve_target(target, names)
    uploads = [Upload(f.filename or "upload", f.content_type, await f.read()) for f in files]
    check_uploads(uploads, limits)

    async def work() -> dict:
        decoded = await asyncio.to_thread(
            decode_all, uploads, service.engine.info.input_size, preprocess, limits.max_pixels
        )
        rows, images, ready = await classify(service, batcher, uploads, decoded, top_k, tta)
        if target is not None and ready:
            await add_explanations(service, batcher, rows, images, ready, wanted)
        temperature = service.engine.info.applied_temperature(tta)  # None: the raw softmax
        return {
            "model": service.sha256[:12],
            "tta": tta,
            "temperature": temperature,
            "results": rows,
        }

    try:
        return await asyncio.wait_for(work(), timeout=limits.timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(
            503,
            f"not finished within the {limits.timeout_s:g} s per-request limit; "
            "send fewer images per request",
        ) from None


def _classify_routes(app: FastAPI, service: ModelService, limits: Limits, batcher: Batcher) -> None:
    """POST /v1/predict and /v1/explain."""

    @app.post(
        "/v1/predict",
        tags=["classify"],
        responses=_ERRORS,
        dependencies=[Depends(require_multipart)],
    )
    async def predict(
        files: Annotated[list[UploadFile], File(description="one or more images")],
        top_k: Annotated[int, Query(ge=1, le=64)] = 3,
        tta: bool = False,
        preprocess: Preprocess = "auto",
    ) -> dict:
        """Top-k classes with probabilities per file; unreadable files get an error entry."""
        return await _classify(service, limits, batcher, files, (top_k, tta, preprocess, None))

    @app.post(
        "/v1/explain",
        tags=["classify"],
        responses=_ERRORS,
        dependencies=[Depends(require_multipart)],
    )
    async def explain(
        files: Annotated[list[UploadFile], File(description="one or more images")],
        top_k: Annotated[int, Query(ge=1, le=64)] = 3,
        tta: bool = False,
        preprocess: Preprocess = "auto",
        target_class: Annotated[
            str | None, Query(alias="class", description="class name or index (default: predicted)")
        ] = None,
    ) -> dict:
        """As /v1/predict, plus a Grad-CAM heat map per image (PNG, base64)."""
        if not service.explain:
            raise RequestError(
                422, "Grad-CAM needs the PyTorch model (run folder or .pt); this server runs ONNX"
            )
        options = (top_k, tta, preprocess, target_class or "")
        return await _classify(service, limits, batcher, files, options)


async def add_explanations(service, batcher, rows, images, ready, wanted) -> None:
    """Grad-CAM for the readable files (on the inference thread), as base64 PNGs."""
    from bloodmnist.explain.gradcam import engine_cams
    from bloodmnist.explain.overlay import enlarge, heat_rgb, overlay, png_base64

    names = service.engine.info.class_names
    targets = [wanted if wanted is not None else names.index(rows[i]["pred"]) for i in ready]
    cams = await batcher.run(engine_cams, service.engine, images, targets)
    for j, i in enumerate(ready):
        rows[i]["explain"] = {
            "class": names[targets[j]],
            "heatmap_png": png_base64(heat_rgb(cams[j])),
            "overlay_png": png_base64(overlay(images[j], cams[j])),
            "input_png": png_base64(enlarge(images[j])),
        }


#: Environment variable carrying the settings to each worker process (`--workers N > 1`).
ENV_SETTINGS = "BLOODMNIST_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """uvicorn factory for multi-worker serving: every worker opens the model itself."""
    import json
    import os

    s = json.loads(os.environ[ENV_SETTINGS])
    service = ModelService.open(
        s["model"], s["device"], s["precision"], s["threads"], s.get("calibrated", True)
    )
    return create_app(service, Limits(**s["limits"]), s["max_batch"])
