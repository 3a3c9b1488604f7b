"""tickcast: Kafka ticks in, forecasts out."""

from __future__ import annotations


def version() -> str:
    """The installed distribution's version (`tickcast --version`, tickcast_build_info)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tickcast")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
