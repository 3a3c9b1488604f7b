"""`tickcast run`: the consumer service, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
from collections.abc import Callable
from types import FrameType

from stream import config
from stream.shutdown import GRACE_S, StopGuard

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings come from --config (default ./config.toml) and TICKCAST_<SECTION>__<KEY>."
    )


def _on_signals(stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask the loop to stop (it finishes the batch in hand, delivers, commits);
    SIGHUP asks for a model reload at the next batch boundary. Handlers only set flags."""

    def stopping(signum: int, frame: FrameType | None) -> None:
        log.info("signal=%s stopping after the current batch", signal.Signals(signum).name)
        stop()

    def reloading(signum: int, frame: FrameType | None) -> None:
        log.info("signal=SIGHUP model reload at the next batch boundary")
        reload()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGHUP, reloading)


def run(args: argparse.Namespace) -> int:
    from stream.service import build

    settings = config.load(args.config)
    service = build(settings)
    runner = service.runner
    _on_signals(runner.stop, service.reload)
    StopGuard(settings.processing.shutdown_timeout_s + GRACE_S).install()
    # Everything built so far (modules, model, clients) lives as long as the process: move it out
    # of the collector's view, so a full collection walks only what the batches allocate. Without
    # it each full collection walked every object of numpy, onnxruntime and the clients, a stall
    # of tens of milliseconds in the middle of a batch.
    gc.collect()
    gc.freeze()
    log.info(
        "ready model=%s ticks=%s forecasts=%s metrics=http://%s:%d/metrics",
        service.model_version,
        settings.topics.ticks,
        settings.topics.forecasts,
        settings.metrics.host,
        settings.metrics.port,
    )
    try:
        clean = runner.run()
    finally:
        service.close()
    # 3: stopped with work that was not delivered in time; it stays uncommitted and is redone.
    return 0 if clean else 3
