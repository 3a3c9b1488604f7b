"""A do-nothing Kafka service, for `tickcast bench e2e`'s latency floor.

Consumes one topic and produces every message unchanged to another, with tickcast's own consumer
and producer settings and the same consume loop shape, and nothing else: no decoding, no Redis, no
model. Tick-to-forecast through it, at the same rate on the same machine, is what any Python
consume-produce service would measure here; what tickcast adds is the difference.

    python -m bench.relay SOURCE_TOPIC TARGET_TOPIC
"""

from __future__ import annotations

import signal
import sys
import uuid

from confluent_kafka import Consumer, Producer

from stream import config
from stream.kafka import consumer_config, producer_config


def main(source: str, target: str) -> int:
    settings = config.load(None)
    consumer = Consumer(consumer_config(settings, group_id=f"relay-{uuid.uuid4().hex[:8]}"))
    producer = Producer(producer_config(settings))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    consumer.subscribe([source])
    while not stopping:
        messages = consumer.consume(1000, timeout=0) or consumer.consume(1, timeout=0.2)
        for m in messages:
            if m.error() is None:
                producer.produce(target, value=m.value(), key=m.key())
        producer.poll(0)
    producer.flush(5)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
