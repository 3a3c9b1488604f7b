"""`tickcast serve`: the HTTP API on the stream's model and result cache.

    command.py     `tickcast serve`: settings, model, Redis, uvicorn (uvloop + httptools)
    app.py         the FastAPI application: routes, body limit, metrics, health
    schemas.py     request validation (422 naming the field) and the response shapes for OpenAPI
    forecaster.py  windows -> forecasts: digest, cache lookup, one model call, cache fill, on a
                   worker thread that batches concurrent requests
    latest.py      the latest window of a symbol, read from the stream's window store

The API and the stream agree bit for bit because they share everything that decides a forecast:
the artifact (stream/predictor.py, batch-invariant), the digest and the cache key and value
(stream/cache.py), and the arithmetic from model outputs to prices (`stream.pipeline.forecast_values`,
held equal to the stream's by tests/serve/test_serve_e2e.py against the real `tickcast run`).
"""
