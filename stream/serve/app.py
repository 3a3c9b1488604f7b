"""The FastAPI application of `tickcast serve`.

    POST /v1/predict              {"prices": [W floats], "symbol"?, "ts"?} -> a forecast
    POST /v1/predict/batch        {"windows": [up to serve.max_batch_windows of those]} ->
                                  {"forecasts": [...]}, one cache lookup and one model call
    GET  /v1/forecasts/{symbol}   the latest published forecast of a symbol (stream/serve/latest.py)
    GET  /healthz                 200 while the model worker lives
    GET  /readyz                  200 when the model is loaded and Redis answers; else 503 naming
                                  what is missing, with its address
    GET  /metrics                 Prometheus text (stream/serve/metrics.py)
    GET  /docs, /openapi.json     OpenAPI

Errors: 422 names the field (`detail[].loc`, e.g. ["body", "prices", 3]), or the position of a
body that is not JSON (["body", 17]), and also a window the model cannot read (a price whose
ratio to the last price is 0 or infinite in float64) or whose forecast is beyond float64; in a
batch it names the window (["body", "windows", 4, "prices", 0]) and refuses the batch, as any
invalid window does. 413 for a body over serve.max_body_bytes (FastAPI's max_body_size: refused
from its Content-Length before it is read, or once the bytes read pass the limit); 404 for a
symbol without a full window; 503 naming Redis when a latest forecast's window cannot be read
within the deadline (a forecast of given prices does not need Redis: the model alone answers it,
uncached); 500 when the model's output for a window is not finite (counted, logged).

This module has no `from __future__ import annotations`: FastAPI reads the request models, built
per window size inside create_app, from the endpoints' annotations at runtime.
"""

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import redis
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from stream import version
from stream.cache import ForecastCache
from stream.config import Settings
from stream.errors import ModelError, StoreUnavailable
from stream.predictor import Predictor
from stream.redisio import Commands
from stream.reload import ModelReloader
from stream.serve.forecaster import Forecaster, NotFinite, WindowMeta
from stream.serve.latest import LatestWindows
from stream.serve.metrics import ServeMetrics
from stream.serve.schemas import (
    SYMBOL_PATTERN,
    BatchResponse,
    ForecastModel,
    Problem,
    request_models,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_encode = msgspec.json.Encoder().encode
_JSON = "application/json"

#: metric label per path: bounded, whatever paths clients try
_ROUTES = ("/v1/predict", "/v1/predict/batch", "/healthz", "/readyz", "/metrics")


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/v1/forecasts/"):
        return "/v1/forecasts/{symbol}"
    return "other"


#: (status, JSON body) of an answer: what both the fast lane and the FastAPI routes send
Answer = tuple[int, bytes]


class FastLane:
    """Pure ASGI application in front of FastAPI: counts and times every request, and answers a
    well-formed prediction request itself, without FastAPI's per-request machinery.

    A POST to /v1/predict or /v1/predict/batch with a JSON body within serve.max_body_bytes is
    validated by the route's own pydantic model straight from the bytes (`model_validate_json`,
    pydantic's Rust parser) and answered by the same function the FastAPI route calls (`handle`).
    Anything else, and any body that model refuses or that passes the body limit, goes on to
    FastAPI with the bytes read so far replayed, so FastAPI's routing, validation (the 422 naming
    the field), body limit (the 413) and OpenAPI remain the API's definition; the lane only skips
    the middleware stack, the dependency solving, Request objects and response classes. Measured
    with wrk on this machine, a FastAPI route that validates the request model and returns fixed
    bytes cost ~200 us of server CPU a request, the same model validated in a route-less ASGI
    endpoint under FastAPI's middleware ~100 us; moved in front of that middleware (seven layers,
    each wrapping send and receive), the lane answered 10 % more uncached single windows a second
    (5,214 -> 5,721 req/s, medians of interleaved wrk runs).
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServeMetrics,
        lanes: dict[str, tuple[type[BaseModel], Callable[[Any], Awaitable[Answer]]]],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.lanes = lanes
        self.max_body_bytes = max_body_bytes
        #: the metric children per (route, status), so a request skips prometheus' label lookup
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            lane = self.lanes.get(scope["path"]) if scope["method"] == "POST" else None
            if lane is not None and _json_within(scope, self.max_body_bytes):
                chunks, whole = await _read_body(receive, self.max_body_bytes)
                body = b"".join(chunks)
                if whole and len(body) <= self.max_body_bytes:
                    model, handle = lane
                    try:
                        request = model.model_validate_json(body)
                    except ValidationError:
                        request = None  # FastAPI validates again and names the field
                    if request is not None:
                        status, payload = await handle(request)
                        await _send_json(send, status, payload)
                        return
                receive = _replay(chunks, whole, receive)
            await self.app(scope, receive, recording_send)
        finally:
            self._count(scope["path"], status, time.perf_counter() - start)

    def _count(self, path: str, status: int, seconds: float) -> None:
        key = (path if path in _ROUTES else _route_label(path), status)
        children = self._children.get(key)
        if children is None:  # bounded: a few routes times the status codes they answer
            route = key[0]
            children = self._children[key] = (
                self.metrics.requests.labels(route=route, code=str(status)),
                self.metrics.request_seconds.labels(route=route),
            )
        children[0].inc()
        children[1].observe(seconds)


def _json_within(scope: Scope, limit: int) -> bool:
    """A JSON body (application/json) not declared longer than `limit`: the lane's to read."""
    json = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            json = value.split(b";", 1)[0].strip().lower() == b"application/json"
        elif name == b"content-length":
            try:
                if int(value) > limit:
                    return False  # FastAPI refuses it (413) without reading it
            except ValueError:
                return False
    return json


async def _read_body(receive: Receive, limit: int) -> tuple[list[bytes], bool]:
    """The body's chunks as read, and whether they are the whole body; stops reading once past
    `limit` bytes (or when the client goes away)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return chunks, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return chunks, True
        if size > limit:
            return chunks, False


def _replay(chunks: list[bytes], whole: bool, receive: Receive) -> Receive:
    """A receive that gives the chunks read again, then goes on with `receive` (for the rest of
    the body, or the disconnect)."""
    pending = list(chunks)

    async def replayed() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not whole}
        return await receive()

    return replayed


_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _send_json(send: Send, status: int, payload: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _validation_error(request: Request, exc: Exception) -> Response:
    """422 with each error's type, field (`loc`) and message; without FastAPI's echo of the
    input, which would repeat a whole batch back, and cannot hold the NaN it refused. A body
    that is not JSON says why in its message (at `loc` ["body", position])."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": _message(e)} for e in errors]
    return Response(_encode({"detail": detail}), status_code=422, media_type=_JSON)


def _message(error: Any) -> str:
    reason = (error.get("ctx") or {}).get("error") if error["type"] == "json_invalid" else None
    return f"{error['msg']}: {reason}" if isinstance(reason, str) else str(error["msg"])


def read_json(body: bytes) -> Any:
    """A request body as JSON, where every way of not being JSON is a JSONDecodeError, which
    FastAPI answers 422 `json_invalid` at ["body", position]. Python's parser raises others, which
    FastAPI answered 400: RecursionError for deep nesting, UnicodeDecodeError for bytes that are
    not UTF-8, and ValueError for an integer of more than 4,300 digits; that one is read as a
    float instead (infinite: beyond any float64), so its field is refused as not finite, as the
    stream refuses such a tick's price."""
    try:
        return json.loads(body, parse_int=_parse_int)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", _text(body), 0) from None
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 ({exc.reason})", _text(body), exc.start) from None


def _parse_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return float(text)


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = read_json(await self.body())
        return self._json


class _Route(APIRoute):
    """The API's routes read JSON bodies with `read_json` (FastAPI's way to change how a route
    reads its request: a route class that hands the handler another Request class)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return route_handler


def _ratio_errors(windows: np.ndarray, batch: bool) -> list[dict[str, Any]]:
    """422 details for windows the model cannot read: it reads log(price / last price)
    (stream/predictor.py), not finite where that ratio is 0 or infinite in float64. A price too
    small beside the last one (5e-324 beside 1900) is named at its position; a last price too
    small beside the others (5e-324 after 1900) at the last position, once. Computed as the
    predictor computes it."""
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        ratios = windows / windows[:, -1:]
    errors = []
    last_j = windows.shape[1] - 1
    for i in np.nonzero(~((ratios > 0.0) & (ratios < np.inf)).all(axis=1))[0]:
        row, last = ratios[i], float(windows[i, -1])
        where: list[Any] = ["body", "windows", int(i), "prices"] if batch else ["body", "prices"]
        for j in np.nonzero(row == 0.0)[0]:
            errors.append(
                {
                    "type": "price_ratio",
                    "loc": [*where, int(j)],
                    "msg": "Input should be within float64 range of the last price (the model"
                    f" reads log(price / last price)): {float(windows[i, j])!r} / {last!r} is 0",
                }
            )
        if np.isinf(row).any():
            top = float(windows[i].max())
            errors.append(
                {
                    "type": "price_ratio",
                    "loc": [*where, last_j],
                    "msg": "Input should be within float64 range of the other prices (the model"
                    f" reads log(price / last price)): {top!r} / {last!r} is infinite",
                }
            )
    return errors


def _forecast_not_finite(i: int | None, window: int, prices: np.ndarray) -> dict[str, Any]:
    """The 422 detail for a window whose forecast prices, last price x exp(model quantile), pass
    float64's largest (a last price near 1.8e308): named at the last price."""
    loc: list[Any] = ["body", "prices", window - 1]
    if i is not None:
        loc = ["body", "windows", i, "prices", window - 1]
    return {
        "type": "forecast_not_finite",
        "loc": loc,
        "msg": "Input should leave room for the forecast: last price x exp(model quantile) is"
        f" not a finite float64 for a last price of {float(prices[-1])!r}",
    }


def _problem(status: int, detail: str) -> Answer:
    return status, _encode({"detail": detail})


def _response(answer: Answer) -> Response:
    return Response(answer[1], status_code=answer[0], media_type=_JSON)


def create_app(
    settings: Settings,
    predictor: Predictor,
    client: redis.Redis,
    registry: CollectorRegistry | None = None,
    reload_every_s: float = 5.0,
) -> FastAPI:
    """The application on a loaded model and a Redis client (neither is checked here: /readyz
    reports Redis), whose socket timeouts bound every Redis call of a request (`tickcast serve`
    sets them from its --deadline). The model worker starts with the application's lifespan; it
    checks `model.path` for a new artifact every `reload_every_s`."""
    metrics = ServeMetrics(registry or CollectorRegistry())
    metrics.set_model(predictor.version)
    window = settings.window.size
    if predictor.window != window:
        raise ModelError(
            f"model window {predictor.window} differs from window.size {window}"
        )  # load_predictor checks this; a directly built app too
    cache = ForecastCache(
        client,
        settings.redis.key_prefix,
        predictor.version,
        predictor.horizon,
        settings.cache.ttl_seconds,
        settings.cache.enabled,
    )
    forecaster = Forecaster(predictor, cache, metrics)

    def swap(new: Predictor) -> None:  # on the worker thread, between batches
        forecaster.use(new)
        metrics.set_model(new.version)
        metrics.model_reloads.inc()

    # The stream's hot reload: a CURRENT that names another artifact (`tickcast promote`), or
    # SIGHUP, swaps the model between batches, so the API keeps serving what the stream serves.
    reloader = ModelReloader(settings.model, window, predictor, swap, reload_every_s)
    forecaster.between_batches = reloader.between_batches
    forecaster.idle_s = min(1.0, reload_every_s)
    latest = LatestWindows(
        Commands(client), settings.redis.key_prefix, window, settings.topics.ticks
    )
    redis_address = _safe_url(settings.redis.url)
    PredictRequest, BatchRequest = request_models(window, settings.serve.max_batch_windows)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        forecaster.start()
        log.info(
            "serving model=%s window=%d redis=%s key_prefix=%s",
            predictor.version,
            window,
            redis_address,
            settings.redis.key_prefix,
        )
        try:
            yield
        finally:
            await asyncio.to_thread(forecaster.close)

    app = _Api(
        title="tickcast",
        version=version(),
        summary="Forecasts of the next price from the last prices, on the stream's model and cache",
        lifespan=lifespan,
        max_body_size=settings.serve.max_body_bytes,
        exception_handlers={RequestValidationError: _validation_error},
        # FastAPI's OpenTelemetry hooks read the global providers on every request (~10 % of a
        # request's CPU here); tickcast's observability is Prometheus (/metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.router.route_class = _Route
    app.state.forecaster = forecaster
    app.state.reload = reloader.request  # SIGHUP (stream/serve/command.py)
    app.state.metrics = metrics

    async def answer(windows: np.ndarray, metas: list[WindowMeta], batch: bool) -> Answer:
        try:
            results = await forecaster.forecast(windows, metas)
        except ModelError as exc:
            return _problem(500, f"model error: {exc}")
        too_large = []
        for i, r in enumerate(results):
            if isinstance(r, NotFinite):
                if not r.in_prices:  # the model's own output: the server's fault
                    where = f" (windows[{i}])" if batch else ""
                    return _problem(500, f"model output not finite{where}: {r}")
                too_large.append(_forecast_not_finite(i if batch else None, window, windows[i]))
        if too_large:
            return 422, _encode({"detail": too_large})
        if batch:
            return 200, _encode({"forecasts": results})
        return 200, _encode(results[0])

    async def handle_predict(body: Any) -> Answer:
        prices = body.prices
        last = prices[-1]
        windows = np.array([prices], dtype=np.float64)
        # the model reads log(price / last price): each ratio must be a float64 above 0 and
        # finite (pydantic has checked every price is one); the smallest and largest decide
        if not (min(prices) / last > 0.0 and max(prices) / last < math.inf):
            return 422, _encode({"detail": _ratio_errors(windows, batch=False)})
        return await answer(windows, [WindowMeta(body.symbol, body.ts)], batch=False)

    async def handle_batch(body: Any) -> Answer:
        windows = np.array([w.prices for w in body.windows], dtype=np.float64)
        errors = _ratio_errors(windows, batch=True)
        if errors:
            return 422, _encode({"detail": errors})
        metas = [WindowMeta(w.symbol, w.ts) for w in body.windows]
        return await answer(windows, metas, batch=True)

    problems: dict[int | str, dict[str, Any]] = {
        413: {"model": Problem, "description": "body larger than serve.max_body_bytes"},
    }
    redis_down: dict[int | str, dict[str, Any]] = {
        503: {"model": Problem, "description": "Redis does not answer (named in the detail)"},
    }

    @app.post(
        "/v1/predict",
        response_model=ForecastModel,
        responses=problems,
        summary="Forecast the next price from one window",
    )
    async def predict(request: PredictRequest) -> Response:  # type: ignore[valid-type]
        return _response(await handle_predict(request))

    @app.post(
        "/v1/predict/batch",
        response_model=BatchResponse,
        responses=problems,
        summary="Forecasts for many windows, in one model call",
    )
    async def predict_batch(request: BatchRequest) -> Response:  # type: ignore[valid-type]
        return _response(await handle_batch(request))

    @app.get(
        # :path, because a symbol may hold "/" (XAU/USD): /v1/forecasts/XAU/USD or XAU%2FUSD
        "/v1/forecasts/{symbol:path}",
        response_model=ForecastModel,
        responses={
            **redis_down,
            404: {"model": Problem, "description": "no full window yet"},
        },
        summary="The latest forecast the stream published for a symbol",
    )
    async def latest_forecast(
        symbol: str = Path(pattern=SYMBOL_PATTERN, description="1-32 chars of [A-Za-z0-9._:/-]"),
    ) -> Response:
        try:
            found = await run_in_threadpool(latest.get, symbol)
        except StoreUnavailable as exc:
            metrics.redis_errors.inc()
            return _response(_problem(503, f"redis unavailable at {redis_address}: {exc}"))
        except ValueError as exc:
            return _response(_problem(500, f"window of {symbol} unreadable: {exc}"))
        if found is None:
            return _response(
                _problem(404, f"no forecast for {symbol}: fewer than {window} prices seen")
            )
        meta = WindowMeta(symbol, found.ts, found.source)
        return _response(await answer(found.prices.reshape(1, window), [meta], batch=False))

    @app.get("/healthz", response_class=PlainTextResponse, summary="Liveness")
    async def healthz() -> PlainTextResponse:
        if forecaster.alive:
            return PlainTextResponse("ok\n")
        return PlainTextResponse("model worker stopped\n", status_code=503)

    def redis_answers() -> str:
        try:
            client.ping()
        except redis.RedisError as exc:
            return f"redis unreachable at {redis_address}: {exc}"
        return ""

    @app.get("/readyz", response_class=PlainTextResponse, summary="Readiness, with reasons")
    async def readyz() -> PlainTextResponse:
        reasons = []
        if not forecaster.alive:
            reasons.append("model not loaded")
        redis_down = await run_in_threadpool(redis_answers)
        if redis_down:
            reasons.append(redis_down)
        if reasons:
            return PlainTextResponse("not ready: " + ", ".join(reasons) + "\n", status_code=503)
        return PlainTextResponse("ready\n")

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    lanes: dict[str, tuple[type[BaseModel], Callable[[Any], Awaitable[Answer]]]] = {
        "/v1/predict": (PredictRequest, handle_predict),
        "/v1/predict/batch": (BatchRequest, handle_batch),
    }
    app.fast_lane = FastLane(
        functools.partial(FastAPI.__call__, app), metrics, lanes, settings.serve.max_body_bytes
    )
    return app


class _Api(FastAPI):
    """FastAPI with the fast lane (`FastLane`) in front of its middleware stack: every request
    reaches the lane first, which answers it or hands it to FastAPI as if it came straight
    from the server."""

    fast_lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_lane is None:
            await super().__call__(scope, receive, send)
        else:
            await self.fast_lane(scope, receive, send)


def _safe_url(url: str) -> str:
    """The URL without any password in it, for messages."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
