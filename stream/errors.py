"""The exception tree of tickcast.

TickcastError                   root; `tickcast` prints its message and exits non-zero
├── ConfigError                 a bad key, type or value in config.toml or TICKCAST_* (exit 2)
├── UnreachableError            Kafka or Redis does not answer at the configured address (exit 2)
├── LocalInfraError             the local broker or Redis could not be installed or started
├── ModelError                  a missing, mismatched or corrupt model artifact
├── DataError                   a CSV of prices that cannot be used (bad date, price, order)
├── KafkaFailure                a Kafka client call failed; carries librdkafka's error code and kind
│   └── DeliveryError           Kafka refused a forecast or dead letter; the batch is not committed
├── StoreUnavailable            Redis failed mid-batch; the batch is retried, never committed
└── StateLost                   Redis lost the windows of some partitions (flushed, restarted
                                empty, a cluster node restarted empty): rebuild them, then retry
"""

from __future__ import annotations


class TickcastError(Exception):
    """Root of every error tickcast raises on purpose."""

    exit_code = 1


class ConfigError(TickcastError):
    exit_code = 2


class UnreachableError(TickcastError):
    exit_code = 2


class LocalInfraError(TickcastError):
    exit_code = 3


class ModelError(TickcastError):
    exit_code = 4


class DataError(TickcastError):
    exit_code = 4


class KafkaFailure(TickcastError):
    """A Kafka client call failed. stream/kafka.py turns librdkafka's errors into this, so the
    rest of tickcast reads the error's kind without importing the client library.

    `fatal`: the client instance is unusable (a fenced or broken transactional producer) and must
    be replaced. `abortable`: the open transaction must be aborted. `retriable`: the same call may
    succeed if repeated.
    """

    def __init__(
        self,
        message: str,
        code: str = "",
        *,
        fatal: bool = False,
        retriable: bool = False,
        abortable: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal
        self.retriable = retriable
        self.abortable = abortable


class DeliveryError(KafkaFailure):
    """A produce failed; carries librdkafka's error name so the cause stays readable."""


class StoreUnavailable(TickcastError):
    """Redis could not be reached or timed out during a batch."""


class RegistryUnavailable(StoreUnavailable):
    """The Schema Registry could not answer (not a fault of the message being decoded). A kind
    of StoreUnavailable: the loop retries the batch with backoff and reports not-ready, as for
    Redis; nothing is committed past it."""


class StateLost(TickcastError):
    """Redis no longer holds the window state of `partitions`: a marker the store wrote or read
    is gone. Raised by `WindowStore.append_batch` before the batch changed anything on the node
    that lost it; the windows are rebuilt from the topic up to the batch, then the batch retried."""

    def __init__(self, partitions: list[int]) -> None:
        super().__init__(f"redis lost the window state of partitions {partitions}")
        self.partitions = partitions
