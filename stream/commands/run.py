"""`tickcast run`: the consumer service, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import gc
import logging

from stream import config

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings come from --config (default ./config.toml) and TICKCAST_<SECTION>__<KEY>."
    )


def run(args: argparse.Namespace) -> int:
    from stream.service import build

    settings = config.load(args.config)
    service = build(settings)
    runner = service.runner
    runner.install_signal_handlers()
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
