"""One module per `tickcast` command; each exposes configure(parser) and run(args) -> int."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def bounded(
    kind: Callable[[str], float], low: float, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse `type` that parses with `kind` and rejects values outside [low, high] (or
    (low, high] when `low_open`) with a message saying the range, not a traceback later."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            lo = f"> {low:g}" if low_open else f">= {low:g}"
            hi = f" and <= {high:g}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {lo}{hi}")
        return value

    return parse
