"""The Bytewax rival of `tickcast bench rivals`: tickcast's job as a batched Bytewax dataflow.

    python -m bench.rival_bytewax SOURCE_TOPIC TARGET_TOPIC [--connector-sink]

One worker, one process (bytewax.run.cli_main), five steps:

    input     bytewax's own KafkaSource (its connector: one confluent-kafka consumer per
              partition, assigned, batches of up to 1,000 messages; tickcast's consumer settings
              for fetch sizes, so both read the broker alike)
    decode    flat_map_batch: each message's JSON to (symbol, tick), keyed by symbol
    windows   stateful_batch (keyed state): per symbol, the last `window.size` prices in process
              memory (bench.floor.Windows); a full window is emitted as it completes
    forecast  flat_map_batch: ONE model call for the batch's windows through tickcast's own
              predictor, priced, hashed and encoded exactly as tickcast does
              (bench.floor.Forecaster: the same code as the floor's, so the same bytes but for
              `produced_at`)
    output    a sink that produces each forecast and polls, without waiting for delivery

The sink is this file's, not bytewax.connectors.kafka.KafkaSink: that one calls `flush()` after
every batch, a round trip to the broker per batch that would make Bytewax slower here than it
needs to be. The comparison is with Bytewax at its best for this job. `--connector-sink` runs
bytewax's own KafkaSink instead (`tickcast bench rivals --bytewax-sink connector`), to see what
that flush costs.

What it does not do, and tickcast does: everything bench/floor.py lists (no validation beyond the
JSON shape, no dead letters, windows only in this process, no result cache, no wait for
delivery, no offset commits: bytewax keeps offsets in its own recovery store, not configured
here, so a restart reads the topic again from the beginning; no scoring, reload, metrics or
bounded shutdown). It is the "batched Bytewax dataflow" of issue 14's outcome target.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from bench.floor import Done, Forecaster, Windows, decode_tick, load


def build(
    source: str,
    target: str,
    settings: Any,
    forecaster: Forecaster,
    size: int,
    connector_sink: bool = False,
) -> Any:
    """The dataflow, ready for bytewax.run.cli_main (or bytewax.testing.run_main)."""
    import msgspec
    from bytewax import operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.operators import StatefulBatchLogic
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from confluent_kafka import Producer

    from stream.kafka import consumer_config, producer_config

    def decode(messages: list[Any]) -> list[tuple[str, tuple[str, float, int, int, int]]]:
        out = []
        for m in messages:
            try:
                t = decode_tick(m.value or b"")
            except msgspec.DecodeError:
                continue
            out.append((t.symbol, (t.symbol, t.price, t.ts, m.partition, m.offset)))
        return out

    class WindowLogic(StatefulBatchLogic):  # type: ignore[misc]
        """One symbol's window: the keyed state."""

        def __init__(self, resume: tuple[str, list[float]] | None) -> None:
            self.windows = Windows(size)
            if resume is not None:
                self.windows.prices[resume[0]] = list(resume[1])

        def on_batch(
            self, values: list[tuple[str, float, int, int, int]]
        ) -> tuple[list[Done], bool]:
            add = self.windows.add
            done: list[Done] = []
            for symbol, price, ts, partition, offset in values:
                prices = add(symbol, price)
                if prices is not None:
                    done.append((symbol, ts, partition, offset, prices))
            return done, StatefulBatchLogic.RETAIN

        def snapshot(self) -> tuple[str, list[float]] | None:
            for symbol, prices in self.windows.prices.items():
                return symbol, prices[-size:]
            return None

    def forecast(items: list[tuple[str, Done]]) -> list[tuple[bytes, bytes, list[Any]]]:
        return forecaster([d for _, d in items])

    class Produce(StatelessSinkPartition):  # type: ignore[misc]
        def __init__(self) -> None:
            self.producer = Producer(producer_config(settings))

        def write_batch(self, items: list[tuple[bytes, bytes, list[Any]]]) -> None:
            produce = self.producer.produce
            for key, value, headers in items:
                try:
                    produce(target, value, key, headers=headers)
                except BufferError:  # librdkafka's queue is full: serve deliveries, then again
                    self.producer.poll(0.05)
                    produce(target, value, key, headers=headers)
            self.producer.poll(0)

        def close(self) -> None:
            self.producer.flush(10)

    class ProduceSink(DynamicSink):  # type: ignore[misc]
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Produce:
            return Produce()

    conf = consumer_config(settings, group_id=f"bytewax-{uuid.uuid4().hex[:8]}")
    flow = Dataflow("tickcast_rival")
    messages = op.input(
        "ticks",
        flow,
        KafkaSource(
            settings.kafka.bootstrap_servers.split(","),
            [source],
            tail=True,
            batch_size=1000,
            add_config=conf,
        ),
    )
    keyed = op.flat_map_batch("decode", messages, decode)
    windows = op.stateful_batch("windows", keyed, WindowLogic)
    forecasts = op.flat_map_batch("forecast", windows, forecast)
    if connector_sink:
        messages_out = op.map(
            "message", forecasts, lambda kvh: KafkaSinkMessage(kvh[0], kvh[1], headers=kvh[2])
        )
        sink = KafkaSink(
            settings.kafka.bootstrap_servers.split(","),
            target,
            add_config=producer_config(settings),
        )
        op.output("produce", messages_out, sink)
    else:
        op.output("produce", forecasts, ProduceSink())
    return flow


def main(source: str, target: str, connector_sink: bool = False) -> int:
    from bytewax.run import cli_main

    settings, forecaster, windows = load(source)
    flow = build(source, target, settings, forecaster, windows.size, connector_sink)
    cli_main(flow, workers_per_process=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], "--connector-sink" in sys.argv[3:]))
