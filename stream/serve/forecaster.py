"""Windows in, forecasts out, for the HTTP API: the stream's digest, cache and model, batched.

Requests arrive one by one on the event loop; each becomes a `Job` (one or more windows) on a
queue. One worker thread takes every job queued at that moment and runs them as one batch, the
way the stream's model thread runs a Kafka batch:

    digests (stream.cache.digests) -> cache.get_many (one MGET) -> predictor.predict_batch (one
    call, the distinct misses) -> cache.put_many (one script call) -> forecasts, per job

No timer waits for a batch to fill: an idle service answers a lone request at once, and under
load the requests that arrived during one batch form the next. Batching changes no bit of any
answer: the predictor's output for a window does not depend on its batch (stream/predictor.py),
and an output is cached before any answer built from it leaves, as in the stream.

Redis is a cache here, never the answer: when a lookup fails or does not answer within its
deadline (the cache client's socket timeout, stream/serve/app.py), the batch is computed by the
model alone and not cached (`cached` false: the same bits, since the model gives a window the
same output in any batch), and a fill that fails leaves the answers as they are. So a hung or
lost Redis costs each batch at most one timeout, and no request waits for Redis longer than that.

Redis and the model are called only from the worker thread (its own Redis connection through
stream.redisio; the ONNX session is never shared), so the event loop never blocks on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import msgspec
import numpy as np
import numpy.typing as npt

from stream.cache import ForecastCache
from stream.cache import digests as window_digests
from stream.contracts import Source
from stream.errors import ModelError, StoreUnavailable, TickcastError
from stream.logs import RepeatFilter
from stream.pipeline import forecast_values
from stream.predictor import Predictor, quantile_columns
from stream.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
# While Redis hangs every batch's cache call fails: the first line of a kind, then one a minute
# with how many were dropped (stream/logs.py).
log.addFilter(RepeatFilter(every_s=60.0))

F64Array = npt.NDArray[np.float64]

#: A batch takes whole jobs until it holds this many windows (a job of more runs alone).
MAX_BATCH_ROWS = 4096


class ApiForecast(msgspec.Struct, frozen=True, gc=False):
    """A forecast as the API returns it: the stream's Forecast field for field, in its order.

    `symbol`, `ts` and `source` are those of the request (null when it gave none): a window sent
    over HTTP has no tick that completed it. For the latest published forecast of a symbol they
    are the stream's.
    """

    symbol: str | None
    ts: int | None
    horizon: int
    price: float
    lower: float
    upper: float
    interval: float
    last_price: float
    model_version: str
    window_hash: str
    cached: bool
    source: Source | None
    produced_at: int


class WindowMeta(msgspec.Struct, frozen=True, gc=False):
    """What a request says about a window besides its prices."""

    symbol: str | None = None
    ts: int | None = None
    source: Source | None = None


class NotFinite(TickcastError):
    """No forecast for a window (the stream drops such a forecast too): the model's output is not
    finite (`in_prices` False), or it is but a price made from it, last price x exp(quantile), is
    not a finite float64 (`in_prices` True: the last price is too large for it)."""

    def __init__(self, window_hash: str, in_prices: bool = False) -> None:
        what = "forecast price" if in_prices else "model output"
        super().__init__(f"{what} not finite for window_hash={window_hash}")
        self.window_hash = window_hash
        self.in_prices = in_prices


@dataclass(slots=True)
class Job:
    """Windows of one request, and where to hand the answer back (the event loop's future)."""

    windows: F64Array  # (n, W) float64, C-contiguous
    metas: list[WindowMeta]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[ApiForecast | NotFinite]]
    results: list[ApiForecast | NotFinite] = field(default_factory=list)


class Forecaster:
    def __init__(
        self,
        predictor: Predictor,
        cache: ForecastCache,
        metrics: ServeMetrics,
    ) -> None:
        self.predictor = predictor
        self.cache = cache
        self.metrics = metrics
        self._columns = quantile_columns(predictor.quantiles, predictor.interval)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="tickcast-serve-model", daemon=True)
        self._started = False
        #: called on the worker thread after every batch and when idle for `idle_s`: the hot
        #: reload's check (stream/reload.py), which may call `use` with a new model
        self.between_batches: Callable[[], None] = lambda: None
        self.idle_s = 1.0

    def use(self, predictor: Predictor) -> None:
        """Serve `predictor` from the next batch on. Call it on the worker thread only (from
        `between_batches`), so a batch is computed and cached by one model."""
        self._columns = quantile_columns(predictor.quantiles, predictor.interval)
        self.predictor = predictor

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------ the event loop's side

    async def forecast(
        self, windows: F64Array, metas: list[WindowMeta]
    ) -> list[ApiForecast | NotFinite]:
        """Forecasts for `windows` (n, W), in order; a NotFinite in place of a window whose model
        output is not finite. Raises StoreUnavailable (Redis) or ModelError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[ApiForecast | NotFinite]] = loop.create_future()
        self._queue.put(Job(windows, metas, loop, future))
        return await future

    # ------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        get = self._queue.get
        while True:
            try:
                job = get(timeout=self.idle_s)
            except queue.Empty:
                self._between_batches()
                continue
            if job is None:
                return
            jobs = [job]
            rows = len(job.windows)
            stop = False
            while rows < MAX_BATCH_ROWS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                rows += len(more.windows)
            try:
                self.run_batch(jobs)
            except Exception as exc:  # every waiting request gets the error, the worker goes on
                if not isinstance(exc, TickcastError):
                    log.exception("forecast batch failed")
                failed: BaseException | None = exc
            else:
                failed = None
            # One wake-up of each event loop per batch, not one per request.
            by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
            for j in jobs:
                by_loop.setdefault(j.loop, []).append(j)
            for loop, its_jobs in by_loop.items():
                # RuntimeError: that loop has closed (shutting down), nobody waits any more
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_hand_back, its_jobs, failed)
            if stop:
                return
            self._between_batches()

    def _between_batches(self) -> None:
        try:
            self.between_batches()
        except Exception:  # the worker must outlive a failed check; the model in hand serves on
            log.exception("between-batches hook failed")

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """One cache lookup, one model call and one cache fill for all windows of `jobs`; fills
        each job's `results`. Called on the worker thread."""
        predictor = self.predictor
        version = predictor.version
        horizon = predictor.horizon
        matrix = jobs[0].windows if len(jobs) == 1 else np.concatenate([j.windows for j in jobs])
        rows = list(matrix)
        hashes = window_digests(rows, horizon)
        distinct = list(dict.fromkeys(hashes))
        n_q = len(predictor.quantiles)

        outputs: dict[str, F64Array] = {}
        from_cache: set[str] = set()
        cache_answered = True
        try:
            found = self.cache.get_many(distinct, version)
        except StoreUnavailable as exc:
            self._cache_unavailable("lookup", exc)
            # the model alone, and no fill: Redis did not answer just now
            cache_answered = False
            found = [None] * len(distinct)
        for d, hit in zip(distinct, found, strict=True):
            if hit is not None and hit.shape == (n_q,):
                outputs[d] = hit
                from_cache.add(d)
        if cache_answered:
            self.metrics.cache_requests.labels(result="hit").inc(len(from_cache))
            self.metrics.cache_requests.labels(result="miss").inc(len(distinct) - len(from_cache))

        misses = [d for d in distinct if d not in outputs]
        if misses:
            first_row = dict(zip(hashes, rows, strict=True))  # equal digests: equal windows
            t0 = time.perf_counter()
            result = predictor.predict_batch(np.stack([first_row[d] for d in misses]))
            self.metrics.inference_seconds.observe(time.perf_counter() - t0)
            self.metrics.inference_batch_size.observe(len(misses))
            if result.shape != (len(misses), n_q):
                raise ModelError(
                    f"model returned shape {result.shape} for {len(misses)} windows,"
                    f" expected ({len(misses)}, {n_q})"
                )
            # (numpy's stubs type .all(axis=...) as "bool or array"; with an axis it is an array.)
            finite = cast("npt.NDArray[np.bool_]", np.isfinite(result).all(axis=1))
            fills = []
            for d, row, ok in zip(misses, result, finite, strict=True):
                if ok:
                    fills.append((d, row))
                    outputs[d] = row
            # Cached before any answer leaves: a later request for the window gets these bits
            # (recomputed, the same bits, if the fill fails).
            if cache_answered:
                try:
                    self.cache.put_many(fills, version)
                except StoreUnavailable as exc:
                    self._cache_unavailable("fill", exc)

        interval = float(predictor.interval)
        produced_at = int(time.time() * 1000)
        columns = self._columns
        i = 0
        counted = {True: 0, False: 0}
        for job in jobs:
            results: list[ApiForecast | NotFinite] = []
            for meta in job.metas:
                d = hashes[i]
                last = float(rows[i][-1])
                i += 1
                row = outputs.get(d)
                values = None if row is None else forecast_values(last, row, columns)
                if values is None:
                    self.metrics.not_finite.inc()
                    not_finite = NotFinite(d, in_prices=row is not None)
                    log.warning("%s", not_finite)
                    results.append(not_finite)
                    continue
                cached = d in from_cache
                counted[cached] += 1
                results.append(
                    ApiForecast(
                        symbol=meta.symbol,
                        ts=meta.ts,
                        horizon=horizon,
                        price=values[0],
                        lower=values[1],
                        upper=values[2],
                        interval=interval,
                        last_price=last,
                        model_version=version,
                        window_hash=d,
                        cached=cached,
                        source=meta.source,
                        produced_at=produced_at,
                    )
                )
            job.results = results
        for cached, n in counted.items():
            if n:
                self.metrics.forecasts.labels(cached=str(cached).lower()).inc(n)

    def _cache_unavailable(self, what: str, exc: StoreUnavailable) -> None:
        """Count a failed cache call and say so (RepeatFilter sums up the repeats)."""
        self.metrics.redis_errors.inc()
        log.warning("cache %s failed, answering from the model alone: %s", what, exc)


def _hand_back(jobs: list[Job], failed: BaseException | None) -> None:
    """On the event loop: each job's results, or the batch's error."""
    for job in jobs:
        if job.future.done():  # the client went away (cancelled)
            continue
        if failed is None:
            job.future.set_result(job.results)
        else:
            job.future.set_exception(failed)
