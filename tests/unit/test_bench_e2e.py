"""bench/e2e.py: a relay that cannot be measured costs the reference, not the benchmark."""

from __future__ import annotations

from typing import Any

from bench.e2e import _reference


class Console:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text: str) -> None:
        self.lines.append(text)


def test_a_failed_relay_is_reported_missing_and_the_run_goes_on() -> None:
    def fails() -> dict[str, Any]:
        raise RuntimeError("the relay produced nothing in 120 s")

    console = Console()
    result = _reference(fails, console)
    assert result["messages_per_s"] is None and result["loop_us_per_message"] is None
    assert "produced nothing" in result["error"] and "not measured" in console.lines[0]


def test_a_measured_relay_is_returned_as_it_is() -> None:
    measured = {"messages_per_s": 1000.0, "loop_us_per_message": 1.2}
    assert _reference(lambda: measured, Console()) == measured
