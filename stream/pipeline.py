"""Ticks in, forecasts out: the pure core of tickcast, given its three collaborators.

    prepare:  messages -> decode_batch -> store.append_batch (one Redis call) -> digests
              -> cache.get_many (one call: replayed windows, and the windows before the batch's
                 windows that the batch itself does not compute, for live scoring)
    compute:  predictor.predict_batch (one call, distinct misses)
    fill:     cache.put_many (one call)
    finish:   forecasts and scores (stream/scoring.py), in input order

`process` runs the four in order. The runner may run compute and fill on a second thread while
it prepares the next batch (the model call releases the GIL), so the two share no state but the
`Prepared` they hand over.

Nothing here touches Kafka; Redis only through the store and the cache. Errors of the collaborators
(StoreUnavailable, ModelError) propagate: the runner retries the batch and commits nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

from stream.cache import digests as window_digests
from stream.contracts import (
    Forecast,
    Record,
    Rejected,
    Score,
    Source,
    Tick,
    Window,
    decode_batch,
)
from stream.errors import ModelError
from stream.predictor import quantile_columns
from stream.scoring import Scorer, previous_window, quantile_prices

log = logging.getLogger(__name__)

F64Array = npt.NDArray[np.float64]

STAGES = ("decode", "window", "cache", "inference")

_STORE_DETAIL = {
    "late": "ts older than the symbol's last tick",
    "duplicate": "ts equal to the symbol's last tick",
}


class WindowBatchLike(Protocol):
    @property
    def windows(self) -> list[Window]: ...
    @property
    def rejected(self) -> list[tuple[Tick, str]]: ...
    @property
    def counts(self) -> dict[str, int]: ...


class WindowStoreLike(Protocol):
    def append_batch(self, ticks: Sequence[Tick]) -> WindowBatchLike: ...


class CacheLike(Protocol):
    """Outputs by window digest, scoped by the model version that computed them."""

    def get_many(self, digests: Sequence[str], model_version: str) -> list[F64Array | None]: ...
    def put_many(self, items: Sequence[tuple[str, F64Array]], model_version: str) -> None: ...


class PredictorLike(Protocol):
    """The model as the pipeline sees it; `quantiles` ascending, one of them 0.5."""

    @property
    def version(self) -> str: ...
    @property
    def horizon(self) -> int: ...
    @property
    def quantiles(self) -> Sequence[float]: ...
    @property
    def interval(self) -> float: ...
    def predict_batch(self, windows: F64Array) -> F64Array: ...


@dataclass(slots=True)
class BatchResult:
    """What one batch produced. `counts` are tick outcomes: the store's plus `invalid`.

    Not frozen: the runner's protocol for it declares plain (settable) attributes.
    """

    forecasts: list[Forecast]
    dead_letters: list[Rejected]
    counts: dict[str, int]
    cache_hits: int = 0
    cache_misses: int = 0
    non_finite: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    inference_batch_size: int = 0
    #: the forecasts made from the windows before this batch's windows, judged by their outcome
    #: (the challenger's too, under its model_version)
    scores: list[Score] = field(default_factory=list)
    #: the challenger's forecasts of the same windows (topics.shadow; never the main topic)
    shadow: list[Forecast] = field(default_factory=list)


@dataclass(slots=True)
class Handoff:
    """A batch's outputs as the next batch sees them: `known` (every digest it will have an
    output for once computed, fixed at prepare) and `outputs`, to be read only once `computed`.
    Holds no reference to the batch, so a chain of batches never computed stays collectable."""

    known: frozenset[str] = frozenset()
    outputs: dict[str, F64Array] = field(default_factory=dict)
    computed: bool = False


@dataclass(slots=True)
class Prepared:
    """A batch between `Pipeline.prepare` and `Pipeline.finish`: windows known, cache looked up.

    `compute` adds the model's outputs for `misses`, `fill` caches them; the runner may run those
    two on another thread while it prepares the next batch, and touches the object only after.
    """

    predictor: PredictorLike
    quantile_columns: tuple[int, int, int]
    windows: list[Window]
    dead_letters: list[Rejected]
    counts: dict[str, int]
    stages: dict[str, float]
    digests: list[str] = field(default_factory=list)
    outputs: dict[str, F64Array] = field(default_factory=dict)
    from_cache: set[str] = field(default_factory=set)
    lookups: int = 0
    misses: list[str] = field(default_factory=list)
    fills: list[tuple[str, F64Array]] = field(default_factory=list)
    filled: bool = False
    #: per window, the digest of the window before it (None: not scored)
    previous: list[str | None] = field(default_factory=list)
    #: windows to look up or compute that are not the batch's own (windows before, for
    #: scoring), by digest
    extra: dict[str, F64Array] = field(default_factory=dict)
    #: windows before that the batch prepared just before this one computes: taken from its
    #: outputs by `compute` (it may still be in the model while this batch is prepared)
    deferred: dict[str, F64Array] = field(default_factory=dict)
    #: what the next batch may take from this one, and what this one takes from the one before
    handoff: Handoff = field(default_factory=lambda: Handoff())
    prior: Handoff | None = None
    #: the challenger's pass over the same windows (None: no challenger)
    shadow: Prepared | None = None


def forecast_values(
    last: float, row: F64Array, columns: tuple[int, int, int]
) -> tuple[float, float, float] | None:
    """(price, lower, upper) from a window's last price and the model's log-return quantiles;
    None when any is not finite. The one place the stream and the HTTP API turn outputs into
    prices, so the same outputs give the same bits in both."""
    lo_i, mid_i, hi_i = columns
    try:
        price = last * math.exp(float(row[mid_i]))
        lower = last * math.exp(float(row[lo_i]))
        upper = last * math.exp(float(row[hi_i]))
    except OverflowError:  # a finite but absurd log return
        return None
    if math.isfinite(price) and math.isfinite(lower) and math.isfinite(upper):
        return price, lower, upper
    return None


class Pipeline:
    def __init__(
        self,
        store: WindowStoreLike,
        cache: CacheLike,
        predictor: PredictorLike,
        source_topic: str,
        clock_ms: Callable[[], int],
        late_policy: Literal["dead_letter", "drop"] = "dead_letter",
        *,
        max_future_ms: int | None = None,
        dead_letter_max_bytes: int | None = None,
        scoring: bool = True,
    ) -> None:
        if late_policy not in ("dead_letter", "drop"):
            raise ValueError(f"late_policy must be 'dead_letter' or 'drop', got {late_policy!r}")
        self.store = store
        self.cache = cache
        self.predictor = predictor
        self.source_topic = source_topic
        self.clock_ms = clock_ms
        self.late_policy = late_policy
        #: a tick further than this ahead of the clock is `future` (None: no bound)
        self.max_future_ms = max_future_ms
        #: dead letters are cut to this many bytes, so the broker takes them (None: kept whole)
        self.dead_letter_max_bytes = dead_letter_max_bytes
        #: score each window's tick against the forecast of the window before (live scoring)
        self.scoring = scoring
        #: the batch prepared last: the next one takes the outputs of the windows before its
        #: windows from it, not from Redis (it may not have filled the cache yet)
        self._last: Prepared | None = None
        #: a registry format's tick decoder (stream/formats.py); None: JSON
        self.parse_tick: Callable[[bytes], Any] | None = None
        #: model.challenger: a second model run on the same windows in the same batch, its
        #: forecasts shadowed (BatchResult.shadow) and scored, never published as forecasts
        self.challenger: PredictorLike | None = None
        #: called with the challenger's version when its pass fails (the errors metric)
        self.on_challenger_error: Callable[[str], None] = lambda version: None

    def _quantile_indices(self, predictor: PredictorLike | None = None) -> tuple[int, int, int]:
        """(lower, median, upper) columns of the model's outputs; read per batch (hot reload)."""
        chosen = predictor or self.predictor
        return quantile_columns(chosen.quantiles, chosen.interval)

    def process(self, records: Sequence[Record], max_message_bytes: int) -> BatchResult:
        """The whole batch, in order: prepare, compute, fill, finish."""
        prepared = self.prepare(records, max_message_bytes)
        self.compute(prepared)
        self.fill(prepared)
        return self.finish(prepared)

    def prepare(self, records: Sequence[Record], max_message_bytes: int) -> Prepared:
        """Decode, update the windows (one Redis call), look up replayed windows (one call).

        On the loop's thread. What is left is the model call for the misses (`compute`), which
        touches nothing the loop uses, so the runner may run it on another thread.
        """
        clock = time.perf_counter
        stages = dict.fromkeys(STAGES, 0.0)

        t0 = clock()
        max_ts = None if self.max_future_ms is None else self.clock_ms() + self.max_future_ms
        ticks, dead_letters = decode_batch(
            records,
            max_message_bytes,
            max_ts=max_ts,
            dead_letter_max_bytes=self.dead_letter_max_bytes,
            parse=self.parse_tick,
        )
        stages["decode"] = clock() - t0

        t0 = clock()
        batch = self.store.append_batch(ticks)
        stages["window"] = clock() - t0
        counts = dict(batch.counts)
        counts["invalid"] = len(dead_letters)
        if batch.rejected and self.late_policy == "dead_letter":
            # The dead letter carries the message exactly as it arrived.
            by_position = {(r.partition, r.offset): r for r in records}
            for tick, reason in batch.rejected:
                r = by_position[(tick.partition, tick.offset)]
                dead_letters.append(
                    Rejected(
                        reason,
                        _STORE_DETAIL.get(reason, reason),
                        r.value,
                        r.key,
                        r.topic,
                        tick.partition,
                        tick.offset,
                    ).truncated(self.dead_letter_max_bytes)
                )

        # The model as of this batch: a hot reload between prepare and finish does not mix two.
        predictor = self.predictor
        prepared = Prepared(
            predictor=predictor,
            quantile_columns=self._quantile_indices(),
            windows=batch.windows,
            dead_letters=dead_letters,
            counts=counts,
            stages=stages,
        )
        windows = batch.windows
        if not windows:
            return prepared

        t0 = clock()
        horizon = predictor.horizon
        digests = window_digests([w.prices for w in windows], horizon)
        prepared.digests = digests
        distinct = list(dict.fromkeys(digests))
        # Only a replayed window (a redelivery, a restarted consumer, a second group sharing the
        # store) can have been forecast before: look those up. A window just appended is new,
        # so its lookup would be a round trip that always misses. Every output is still cached
        # before it is published, so a later replay of any window finds it.
        replayed = {d for d, w in zip(digests, windows, strict=True) if w.replayed}
        lookups = [d for d in distinct if d in replayed]
        prior, self._last = self._last, prepared
        if self.scoring and horizon == 1:
            # The window before each window: its forecast is what this window's tick scores.
            # Its output is this batch's own when the batch holds it, or the batch's before
            # (in memory, see `compute`), else the cache's (looked up in the same round trip),
            # else computed in the batch's model call.
            # A symbol's windows appended in one batch end at consecutive entries of its series,
            # so the window before each but its first is the one before it in the batch: only
            # the first (and replayed ones) need the window built and hashed.
            previous: list[str | None] = [None] * len(windows)
            last_appended: dict[str, str] = {}
            build: list[tuple[int, F64Array]] = []
            for i, (d, w) in enumerate(zip(digests, windows, strict=True)):
                if not w.replayed:
                    before_d = last_appended.get(w.tick.symbol)
                    last_appended[w.tick.symbol] = d
                    if before_d is not None:
                        previous[i] = before_d
                        continue
                prev = previous_window(w)
                if prev is not None:
                    build.append((i, prev))
            own = set(distinct)
            prior_has: frozenset[str] = frozenset()
            if prior is not None and prior.predictor.version == predictor.version:
                prepared.prior = prior.handoff
                prior_has = prior.handoff.known
            built = window_digests([prev for _, prev in build], horizon)
            for (i, prev), d in zip(build, built, strict=True):
                previous[i] = d
                if d in own or d in prepared.extra or d in prepared.deferred:
                    continue
                if d in prior_has:
                    prepared.deferred[d] = prev
                else:
                    prepared.extra[d] = prev
            prepared.previous = previous
            lookups += prepared.extra
            prepared.handoff = Handoff(
                frozenset({*distinct, *prepared.extra, *prepared.deferred}), prepared.outputs
            )
        cached = self.cache.get_many(lookups, predictor.version) if lookups else []
        stages["cache"] = clock() - t0
        if len(cached) != len(lookups):
            raise RuntimeError(f"cache returned {len(cached)} results for {len(lookups)} keys")
        n_q = len(predictor.quantiles)
        for d, hit in zip(lookups, cached, strict=True):
            if hit is not None and hit.shape == (n_q,):
                prepared.outputs[d] = hit
                prepared.from_cache.add(d)
        prepared.lookups = len(lookups)
        prepared.misses = [d for d in distinct if d not in prepared.outputs]
        prepared.misses += [d for d in prepared.extra if d not in prepared.outputs]
        challenger = self.challenger
        if challenger is not None and challenger.version != predictor.version:
            prepared.shadow = self._shadow(prepared, challenger, replayed)
        return prepared

    def _shadow(
        self, prepared: Prepared, challenger: PredictorLike, replayed: set[str]
    ) -> Prepared:
        """The challenger's pass over the champion's windows: the same digests (and windows
        before, for its own scores), its own cache lookup under its version (one call), its own
        model call in `compute`. Nothing is handed over between batches: a window before that
        the previous batch's challenger pass has not cached yet is computed again (the output
        of a window does not depend on its batch)."""
        t0 = time.perf_counter()
        shadow = Prepared(
            predictor=challenger,
            quantile_columns=self._quantile_indices(challenger),
            windows=prepared.windows,
            dead_letters=[],
            counts={},
            stages=dict.fromkeys(STAGES, 0.0),
        )
        if challenger.horizon == prepared.predictor.horizon:
            shadow.digests = prepared.digests
            shadow.previous = prepared.previous
            shadow.extra = {**prepared.extra, **prepared.deferred}
        else:  # another horizon hashes differently and is not scored against the next tick
            shadow.digests = window_digests(
                [w.prices for w in prepared.windows], challenger.horizon
            )
            replayed = {
                d for d, w in zip(shadow.digests, prepared.windows, strict=True) if w.replayed
            }
        distinct = list(dict.fromkeys(shadow.digests))
        lookups = [d for d in distinct if d in replayed] + list(shadow.extra)
        cached = self.cache.get_many(lookups, challenger.version) if lookups else []
        n_q = len(challenger.quantiles)
        for d, hit in zip(lookups, cached, strict=True):
            if hit is not None and hit.shape == (n_q,):
                shadow.outputs[d] = hit
                shadow.from_cache.add(d)
        shadow.lookups = len(lookups)
        shadow.misses = [d for d in distinct if d not in shadow.outputs]
        shadow.misses += [d for d in shadow.extra if d not in shadow.outputs]
        prepared.stages["cache"] += time.perf_counter() - t0
        return shadow

    def compute(self, prepared: Prepared) -> None:
        """One model call for the distinct windows the cache did not have. Touches no Redis and
        no state of the loop: safe on another thread while the loop prepares the next batch.

        The outputs of the windows before (scoring) that the batch prepared before this one
        computed are taken from it: it computes before this one (the runner awaits it first);
        one it did not compute (dropped, or not finite) is computed here."""
        prior, prepared.prior = prepared.prior, None
        done = prepared.handoff
        for d, prev in prepared.deferred.items():
            row = None
            if prior is not None and prior.computed:
                row = prior.outputs.get(d)
            if row is not None:
                prepared.outputs[d] = row
            elif d not in prepared.outputs:
                prepared.extra[d] = prev
                prepared.misses.append(d)
        prepared.deferred = {}
        if prepared.shadow is not None:
            # The challenger never stands in the champion's way: a failure of its model call
            # costs only this batch's shadow (logged and counted), and its time is its own.
            try:
                self.compute(prepared.shadow)
            except Exception as exc:
                log.error(
                    "challenger failed, batch not shadowed model_version=%s: %s",
                    prepared.shadow.predictor.version,
                    exc,
                )
                self.on_challenger_error(prepared.shadow.predictor.version)
                prepared.shadow = None
        misses = prepared.misses
        if not misses:
            done.computed = True
            return
        first_window: dict[str, Window] = {}
        for d, w in zip(prepared.digests, prepared.windows, strict=True):
            first_window.setdefault(d, w)
        extra = prepared.extra
        # np.array copies the rows in C; np.stack then astype spent ~1 us a window in Python
        # set-up per row (both raise ValueError on rows of unequal length)
        matrix = np.array(
            [extra[d] if d in extra else first_window[d].prices for d in misses],
            dtype=np.float64,
        )
        n_q = len(prepared.predictor.quantiles)
        t0 = time.perf_counter()
        result = prepared.predictor.predict_batch(matrix)
        prepared.stages["inference"] += time.perf_counter() - t0
        if result.shape != (len(misses), n_q):
            raise ModelError(
                f"model returned shape {result.shape} for {len(misses)} windows,"
                f" expected ({len(misses)}, {n_q})"
            )
        # One pass over the matrix, not one numpy call per row.
        # (numpy's stubs type .all(axis=...) as "bool or array"; with an axis it is an array.)
        finite = cast("npt.NDArray[np.bool_]", np.isfinite(result).all(axis=1))
        for d, row, ok in zip(misses, result, finite, strict=True):
            if ok:
                prepared.fills.append((d, row))
                prepared.outputs[d] = row
        done.computed = True

    def fill(self, prepared: Prepared) -> None:
        """Cache what `compute` produced (one Redis call), before anything is published: a
        replay then gets the very same numbers, which a recomputation in another batch need not
        give (the last bits of a float32 model depend on the batch it ran in)."""
        if prepared.shadow is not None:
            self.fill(prepared.shadow)
        if prepared.filled or not prepared.fills:
            return
        t0 = time.perf_counter()
        self.cache.put_many(prepared.fills, prepared.predictor.version)
        prepared.stages["cache"] += time.perf_counter() - t0
        prepared.filled = True

    def finish(self, prepared: Prepared) -> BatchResult:
        """The forecasts of a computed and filled batch, in input order, and their scores.

        Each window's output is priced once (`quantile_prices`): its forecast takes its interval
        and median from those prices, and the next tick's score takes them all; a window's
        digest fixes its bytes, so its last price too, and the score's prices are the very
        numbers the forecast carries. The score shares the forecast's `Source` (the same tick).
        """
        predictor = prepared.predictor
        horizon = predictor.horizon
        interval = float(predictor.interval)
        version = predictor.version
        outputs = prepared.outputs
        from_cache = prepared.from_cache
        forecasts: list[Forecast] = []
        non_finite = 0
        produced_at = self.clock_ms()
        columns = prepared.quantile_columns
        lo_i, mid_i, hi_i = columns
        topic = self.source_topic
        isfinite = math.isfinite
        #: digest -> its output's quantile prices (None: one beyond a double)
        priced: dict[str, list[float] | None] = {}
        sources: list[Source] = []
        for d, w in zip(prepared.digests, prepared.windows, strict=True):
            row = outputs.get(d)
            tick = w.tick
            source = Source(topic, tick.partition, tick.offset)
            sources.append(source)
            if row is not None:
                last = tick.price
                if d in priced:
                    prices = priced[d]
                else:
                    prices = priced[d] = quantile_prices(last, row)
                if prices is not None:
                    price, lower, upper = prices[mid_i], prices[lo_i], prices[hi_i]
                    values = (
                        (price, lower, upper)
                        if isfinite(price) and isfinite(lower) and isfinite(upper)
                        else None
                    )
                else:  # a quantile beyond a double: the interval's own may still be finite
                    values = forecast_values(last, row, columns)
                if values is not None:
                    price, lower, upper = values
                    # positional, in the fields' (wire) order: a third cheaper than keywords
                    forecasts.append(
                        Forecast(
                            tick.symbol,
                            tick.ts,
                            horizon,
                            price,
                            lower,
                            upper,
                            interval,
                            last,
                            version,
                            d,
                            d in from_cache,
                            source,
                            produced_at,
                        )
                    )
                    continue
            non_finite += 1
            log.warning(
                "model output not finite, forecast dropped symbol=%s window_hash=%s"
                ' partition="%s[%d]" offset=%d model_version=%s',
                tick.symbol,
                d,
                topic,
                tick.partition,
                tick.offset,
                version,
            )
        scores = self._scores(prepared, priced, sources)
        shadow: list[Forecast] = []
        if prepared.shadow is not None:
            challenged = self.finish(prepared.shadow)
            shadow = challenged.forecasts
            scores += challenged.scores
        return BatchResult(
            forecasts,
            prepared.dead_letters,
            prepared.counts,
            scores=scores,
            shadow=shadow,
            cache_hits=len(from_cache),
            cache_misses=prepared.lookups - len(from_cache),
            non_finite=non_finite,
            stage_seconds=prepared.stages,
            inference_batch_size=len(prepared.misses),
        )

    def _scores(
        self,
        prepared: Prepared,
        priced: dict[str, list[float] | None],
        sources: list[Source],
    ) -> list[Score]:
        """Each window's tick scores the forecast made from the window before it: the outcome
        is the tick's price, the forecast the model's output for [before] + prices[:-1].

        `priced`: the quantile prices of the batch's own windows by digest (`finish`); a window
        before that is not one of them (the batch's first of its symbol) is priced here, from
        its last price, `prices[-2]` of the window after it. `sources`: per window, its tick's.
        """
        if not prepared.previous:
            return []
        predictor = prepared.predictor
        scorer = Scorer(
            predictor.quantiles,
            prepared.quantile_columns,
            predictor.horizon,
            predictor.interval,
            predictor.version,
        )
        outputs = prepared.outputs
        # what each score needs, gathered per forecast and scored in one pass (score_many)
        prices: list[list[float]] = []
        lasts: list[float] = []
        actuals: list[float] = []
        symbols: list[str] = []
        ts: list[int] = []
        hashes: list[str] = []
        scored: list[Source] = []
        for d, w, source in zip(prepared.previous, prepared.windows, sources, strict=True):
            if d is None:
                continue
            row = outputs.get(d)
            if row is None:
                continue
            last = float(w.prices[-2])
            if d in priced:
                p = priced[d]
            else:
                p = priced[d] = quantile_prices(last, row)
            if p is None:  # not finite: never published either
                continue
            tick = w.tick
            prices.append(p)
            lasts.append(last)
            actuals.append(tick.price)
            symbols.append(tick.symbol)
            ts.append(tick.ts)
            hashes.append(d)
            scored.append(source)
        return scorer.score_many(prices, lasts, actuals, symbols, ts, hashes, scored)
