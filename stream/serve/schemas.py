"""Request validation and response shapes of the HTTP API (pydantic, for FastAPI and OpenAPI).

The request models are built for the configured window size and batch limit, so a 422 says
"List should have at least 60 items" at `["body", "prices"]`. Prices are strict finite numbers
above zero (a boolean or a numeric string is not a price; NaN and Infinity are refused), exactly
what the stream accepts as a tick's price. The symbol follows the tick contract.

Responses are encoded by msgspec from `forecaster.ApiForecast` (the stream's own codec); the
pydantic response models below only document them in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from stream.contracts import TS_LIMIT

SYMBOL_PATTERN = r"^[A-Za-z0-9._:/-]{1,32}$"

Price = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN, description="1-32 chars of [A-Za-z0-9._:/-]")]
EventTime = Annotated[
    int,
    Field(
        ge=-TS_LIMIT,
        le=TS_LIMIT,
        strict=True,
        description="event time of the last price, epoch ms (echoed back)",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def request_models(window: int, max_windows: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """(PredictRequest, BatchRequest) for windows of `window` prices, at most `max_windows`."""

    class PredictRequest(_Strict):
        prices: Annotated[
            list[Price],
            Field(
                min_length=window,
                max_length=window,
                description=f"the last {window} prices, oldest first, each finite and > 0",
            ),
        ]
        symbol: Symbol | None = None
        ts: EventTime | None = None

    class BatchRequest(_Strict):
        windows: Annotated[
            list[PredictRequest],
            Field(min_length=1, max_length=max_windows, description="one model call for all"),
        ]

    return PredictRequest, BatchRequest


class SourceModel(BaseModel):
    topic: str
    partition: int
    offset: int


class ForecastModel(BaseModel):
    """The stream's Forecast fields, in its order (`source` null for a window sent over HTTP)."""

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
    source: SourceModel | None
    produced_at: int


class BatchResponse(BaseModel):
    forecasts: list[ForecastModel]


class Problem(BaseModel):
    detail: str
