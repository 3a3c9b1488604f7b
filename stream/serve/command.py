"""`tickcast serve`: the HTTP API, on uvicorn with uvloop and httptools.

Each server process loads the model once (stream/predictor.py, verified against its manifest)
and warms it up before it accepts a request. With `serve.workers` above 1, uvicorn's supervisor
starts that many processes on one socket; each builds its application through `app_factory`
from the same settings file and environment.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal

import uvicorn
from fastapi import FastAPI

from stream import config
from stream.config import Settings
from stream.errors import ConfigError
from stream.serve.protocol import OneWriteHttpToolsProtocol

log = logging.getLogger(__name__)

#: Where a worker process finds the --config path of the command that started it. Not TICKCAST_*:
#: that namespace holds settings only (an unknown TICKCAST_ name is a configuration error).
CONFIG_ENV = "_TICKCAST_SERVE_CONFIG"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: serve.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: serve.port, 8000)")
    parser.add_argument("--workers", type=int, help="server processes (default: serve.workers)")
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="how long a request may wait for Redis: each Redis call times out at half of it"
        " (and at redis.socket_timeout_s); then a forecast is answered from the model alone,"
        " uncached, and a latest forecast or /readyz is 503 (default: serve.deadline_s, 0.5)",
    )
    parser.epilog = (
        "Settings come from --config (default ./config.toml) and TICKCAST_<SECTION>__<KEY>;"
        " the API uses [model], [redis], [cache], [window], [topics] (the ticks topic names the"
        " source of a latest forecast) and [serve]. OpenAPI docs at /docs."
    )


def build_app(settings: Settings) -> FastAPI:
    """Load and warm the model, make the Redis client (it connects on first use: /readyz says
    whether Redis answers, so the API starts before Redis and rides out its restarts), build the
    app.

    The client's timeouts are the request deadline's: a request waits for the batch in progress
    and then its own, each at most one Redis call that may time out (a failed lookup skips the
    fill, stream/serve/forecaster.py), so at half the deadline a call no request waits for
    Redis much longer than the deadline, hung (SIGSTOP) or gone."""
    import numpy as np
    import redis

    deadline_s = settings.serve.deadline_s
    from stream.predictor import load_predictor
    from stream.serve.app import create_app

    predictor = load_predictor(settings.model, settings.window.size)
    # The first call of an ONNX session allocates its buffers: pay it before the first request.
    predictor.predict_batch(np.full((1, settings.window.size), 1.0))
    client = redis.Redis.from_url(
        settings.redis.url,
        # ACL user, password, TLS files (redis.username, redis.password, redis.tls_*), as the stream
        **settings.redis.connection_kwargs(),
        socket_timeout=min(settings.redis.socket_timeout_s, deadline_s / 2),
        socket_connect_timeout=min(settings.redis.socket_timeout_s, deadline_s / 2),
        decode_responses=False,
    )
    app = create_app(settings, predictor, client)
    # What start-up built lives as long as the process: keep it out of the collector's walks
    # (as `tickcast run` does), so a full collection does not stall a request.
    gc.collect()
    gc.freeze()
    return app


def app_factory() -> FastAPI:
    """A worker process's application (uvicorn --factory), from the command's settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return build_app(config.load(os.environ.get(CONFIG_ENV) or None))


def run(args: argparse.Namespace) -> int:
    if args.deadline is not None:
        if not 0 < args.deadline <= 60:  # NaN too
            raise ConfigError(
                f"--deadline must be a number of seconds above 0 and at most 60, not {args.deadline}"
            )
        # A setting like any other, so the worker processes read it from the environment too.
        os.environ["TICKCAST_SERVE__DEADLINE_S"] = repr(args.deadline)
    settings = config.load(args.config)
    host = args.host or settings.serve.host
    port = settings.serve.port if args.port is None else args.port
    workers = settings.serve.workers if args.workers is None else args.workers
    workers = workers or os.cpu_count() or 1
    common = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        # httptools, each response written in one send (stream/serve/protocol.py)
        "http": OneWriteHttpToolsProtocol,
        "access_log": False,  # thousands of lines a second; /metrics counts the requests
        "proxy_headers": False,  # no client address is used or logged: skip the rewrite
        "log_level": "warning",
        "timeout_graceful_shutdown": 10,
    }
    log.info("tickcast serve http://%s:%d workers=%d docs=/docs", host, port, workers)
    # uvicorn handles SIGTERM (stops accepting, finishes the requests in hand, runs the lifespan's
    # shutdown), then re-raises it under the handler that was there before: this one, so a clean
    # stop exits 0, as `tickcast run` does.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if workers == 1:
        app = build_app(settings)
        # SIGHUP: reload the model at the next batch boundary, as `tickcast run` does (with
        # several workers each checks model.path on its own every few seconds)
        signal.signal(signal.SIGHUP, lambda signum, frame: app.state.reload())
        uvicorn.run(app, **common)  # type: ignore[arg-type]
    else:
        if args.config:
            os.environ[CONFIG_ENV] = str(args.config)
        uvicorn.run(
            "stream.serve.command:app_factory",
            factory=True,
            workers=workers,
            **common,  # type: ignore[arg-type]
        )
    return 0
