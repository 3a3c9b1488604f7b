"""Poison messages among valid ticks: the service never stops, every bad message is in the
dead-letter topic once, with the reason the corpus (tests/corpus.py) says, truncated when too large
for it (headers error.truncated and source.sha256), and the valid ticks' forecasts are exactly a
clean run's."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence

import orjson
import pytest

from tests.corpus import malformed
from tests.e2e.harness import gold_feed
from tests.faults.conftest import GUARANTEES
from tests.faults.support import (
    SIZES,
    Received,
    compare,
    drain,
    expected_forecasts,
    feed_now,
    seeded_rng,
)

pytestmark = pytest.mark.faults

MAX_MESSAGE_BYTES = 65_536  # processing.max_message_bytes, the default
MiB = 1024 * 1024


def check_dead_letters(
    dead: Sequence[Received],
    bad: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]],
    ticks_topic: str,
) -> list[str]:
    """Each bad message (by its position in the ticks topic) dead-lettered once, with its reason
    and its bytes (whole, or cut with the original's size and digest in the headers)."""
    problems: list[str] = []
    seen: Counter[tuple[int, int]] = Counter()
    for d in dead:
        h = d.headers
        try:
            source = (int(h["source.partition"]), int(h["source.offset"]))
        except (KeyError, ValueError):
            problems.append(f"dead letter without a source: headers {sorted(h)}")
            continue
        seen[source] += 1
        entry = bad.get(source)
        if entry is None:
            problems.append(f"a valid tick dead-lettered: {source} {h.get('error')!r}")
            continue
        _, original, reason = entry
        original = original or b""
        value = d.value or b""
        where = f"{source} ({reason}, {len(original)} bytes)"
        if h.get("error", b"").decode() != reason:
            problems.append(f"{where}: reason {h.get('error')!r}, detail {h.get('error.detail')!r}")
        if h.get("source.topic", b"").decode() != ticks_topic:
            problems.append(f"{where}: source.topic {h.get('source.topic')!r}")
        if not h.get("error.detail"):
            problems.append(f"{where}: no error.detail")
        if "error.truncated" in h:
            if h["error.truncated"] != str(len(original)).encode():
                problems.append(f"{where}: error.truncated {h['error.truncated']!r}")
            if h.get("source.sha256", b"").decode() != hashlib.sha256(original).hexdigest():
                problems.append(f"{where}: source.sha256 {h.get('source.sha256')!r}")
            if not (len(value) < len(original) and original.startswith(value)):
                problems.append(f"{where}: cut to {len(value)} bytes that do not begin it")
        elif value != original:
            problems.append(f"{where}: value changed ({len(value)} bytes)")
    missing = [p for p in bad if p not in seen]
    if missing:
        reasons = Counter(bad[p][2] for p in missing)
        problems.append(f"{len(missing)} bad messages not dead-lettered, by reason {dict(reasons)}")
    twice = [p for p, n in seen.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} bad messages dead-lettered more than once, e.g. {twice[:5]}")
    return problems


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_fuzz_corpus_among_valid_ticks(
    deploy, kafka_bootstrap, private_redis, predictor, guarantee
) -> None:  # type: ignore[no-untyped-def]
    rng, seed = seeded_rng()
    now_ms = int(time.time() * 1000)
    corpus = malformed(
        SIZES.corpus,
        seed,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_oversize_bytes=4 * MiB,
        huge=SIZES.huge,
        now_ms=now_ms,
    )
    corpus.append((None, rng.randbytes(4 * MiB), "oversize"))  # at least one of several MB
    valid = gold_feed(symbols=SIZES.corpus_symbols, rows=SIZES.corpus_rows)
    # The corpus at random places among the valid ticks, each kept in its order.
    slots = set(rng.sample(range(len(valid) + len(corpus)), len(corpus)))
    bad_iter, valid_iter = iter(corpus), iter(valid)
    feed: list[tuple[bytes | None, bytes | None]] = []
    is_bad: list[str | None] = []
    for i in range(len(valid) + len(corpus)):
        if i in slots:
            key, value, reason = next(bad_iter)
            feed.append((key, value))
            is_bad.append(reason)
        else:
            feed.append(next(valid_iter))
            is_bad.append(None)

    # Multi-MB messages: the ticks topic and the test's producer must take them.
    d = deploy(
        kafka_bootstrap,
        private_redis.url,
        ticks_config={"max.message.bytes": str(8 * MiB)},
        TICKCAST_PROCESSING__GUARANTEE=guarantee,
    )
    svc = d.start()
    started = time.monotonic()
    positions = feed_now(
        d.bootstrap, d.topics["ticks"], feed, config={"message.max.bytes": 16 * MiB}
    )
    d.wait_caught_up(svc, timeout=180)
    took = time.monotonic() - started
    dead_letter_metric = {
        k: v for k, v in svc.metric_samples("tickcast_dead_letters_total").items() if v
    }
    assert d.stop(svc) == 0, svc.tail(30)

    bad = {
        pos: (feed[i][0], feed[i][1], reason)
        for i, (pos, reason) in enumerate(zip(positions, is_bad, strict=True))
        if reason is not None
    }
    valid_positions = [p for p, r in zip(positions, is_bad, strict=True) if r is None]
    expected = expected_forecasts(valid, valid_positions, predictor)
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    dead = drain(d.bootstrap, d.topics["dlq"])
    problems = check_dead_letters(dead, bad, d.topics["ticks"])
    problems += outcome.problems(exactly_once=True)
    by_reason = Counter(reason for _, _, reason in corpus)
    metric_by_reason = {
        k.split('reason="')[1].split('"')[0]: int(v) for k, v in dead_letter_metric.items()
    }
    if metric_by_reason != dict(by_reason):
        problems.append(f"dead_letters_total by reason {metric_by_reason} != {dict(by_reason)}")
    sizes = sorted(len(v or b"") for _, v, r in corpus if r == "oversize")
    report = (
        f"{guarantee}, seed {seed}; {len(valid)} valid ticks and {len(corpus)} malformed "
        f"({dict(by_reason)}; oversize up to {sizes[-1] if sizes else 0} bytes) in {took:.0f} s; "
        f"{len(dead)} dead letters ({sum('error.truncated' in x.headers for x in dead)} truncated); "
        f"{outcome.summary()}"
    )
    print(report)
    assert not problems, f"{report}\n" + "\n".join(problems[:20]) + "\n" + d.log_excerpt()


def test_a_1_mb_tick_is_dead_lettered_and_its_partition_moves_on(
    deploy, kafka_bootstrap, private_redis, predictor
) -> None:  # type: ignore[no-untyped-def]
    valid = gold_feed(symbols=4, rows=160)
    # A tick of the first symbol, padded to 1,000,000 bytes (the broker's default topic limit
    # takes it; processing.max_message_bytes and the dead-letter topic's limit do not).
    first = orjson.loads(valid[0][1])
    head = orjson.dumps({**first, "ts": first["ts"] + 1})[:-1] + b', "pad": "'
    big = head + b"x" * (1_000_000 - len(head) - 2) + b'"}'
    assert len(big) == 1_000_000
    at = len(valid) // 3
    feed: list[tuple[bytes | None, bytes | None]] = [*valid[:at], (valid[0][0], big), *valid[at:]]

    d = deploy(kafka_bootstrap, private_redis.url)
    svc = d.start()
    positions = feed_now(
        d.bootstrap, d.topics["ticks"], feed, config={"message.max.bytes": 2 * MiB}
    )
    d.wait_caught_up(svc, timeout=90)
    assert d.stop(svc) == 0, svc.tail(30)

    big_position = positions[at]
    valid_positions = positions[:at] + positions[at + 1 :]
    expected = expected_forecasts(valid, valid_positions, predictor)
    after = [
        k
        for k, e in expected.items()
        if (e.partition, e.offset) > big_position and e.partition == big_position[0]
    ]
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    dead = drain(d.bootstrap, d.topics["dlq"])
    problems = check_dead_letters(
        dead, {big_position: (feed[at][0], big, "oversize")}, d.topics["ticks"]
    )
    problems += outcome.problems(exactly_once=True)

    # A restart republishes nothing and dead-letters nothing again: everything was committed.
    again = d.start()
    time.sleep(3.0)
    d.wait_caught_up(again, timeout=30)
    assert d.stop(again) == 0, again.tail(30)
    forecasts_after = len(drain(d.bootstrap, d.topics["forecasts"]))
    dead_after = len(drain(d.bootstrap, d.topics["dlq"]))
    if (forecasts_after, dead_after) != (outcome.seen, len(dead)):
        problems.append(
            f"the restart published {forecasts_after - outcome.seen} forecasts and "
            f"{dead_after - len(dead)} dead letters again"
        )
    report = (
        f"a 1,000,000-byte tick at {big_position} among {len(valid)} ticks "
        f"({len(after)} forecasts expected after it in its partition); {len(dead)} dead letters "
        f"{[(x.headers.get('error'), x.headers.get('error.truncated'), len(x.value or b'')) for x in dead]}; "
        f"{outcome.summary()}"
    )
    print(report)
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()
