"""Hot model reload: a new artifact is loaded, checked, warmed up and swapped in between batches.

Triggers: SIGHUP, or the served artifact changing under `model.path` (a CURRENT file that names
another version, or a manifest with another version), checked every few seconds. The new model is
loaded and verified like at start and runs once before the swap, so the first batch it serves does
not pay for its warm-up. A model that fails to load is logged and the running one keeps serving.
Swapping between batches loses and duplicates nothing: a batch is computed by one model, and the
result cache is keyed by model version, so the new model never serves the old one's outputs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stream.config import ModelSettings
from stream.errors import ModelError
from stream.predictor import MANIFEST, Predictor, load_predictor, resolve_artifact

log = logging.getLogger(__name__)


def served_version(model: ModelSettings) -> tuple[Path, str] | None:
    """The artifact folder and version that loading now would serve; None if unreadable."""
    try:
        folder = resolve_artifact(model.path)
        version = str(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["version"])
    except (ModelError, OSError, ValueError, KeyError, TypeError):
        return None
    return folder, version


class ModelReloader:
    def __init__(
        self,
        model: ModelSettings,
        window_size: int,
        current: Predictor,
        swap: Callable[[Predictor], None],
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.window_size = window_size
        self.version = current.version
        self.swap = swap
        self.check_every_s = check_every_s
        self.clock = clock
        self.requested = False
        self._next_check = clock() + check_every_s
        self._failed: str | None = (
            None  # a version that failed to load; not retried until it changes
        )

    def request(self) -> None:
        """Reload at the next batch boundary (the SIGHUP handler calls this)."""
        self.requested = True

    def between_batches(self) -> None:
        now = self.clock()
        if not self.requested and now < self._next_check:
            return
        self._next_check = now + self.check_every_s
        forced, self.requested = self.requested, False
        found = served_version(self.model)
        if found is None:
            if forced:
                log.error("model reload requested, but no readable artifact at model.path")
            return
        folder, version = found
        if not forced and (version == self.version or version == self._failed):
            return
        started = time.perf_counter()
        try:
            predictor = load_predictor(self.model, self.window_size)
            predictor.predict_batch(np.full((1, self.window_size), 100.0))  # warm up before serving
        except ModelError as exc:
            self._failed = version
            log.error("model reload failed, still serving version=%s: %s", self.version, exc)
            return
        old, self.version, self._failed = self.version, predictor.version, None
        self.swap(predictor)
        log.info(
            "model reloaded from=%s to=%s path=%s seconds=%.2f",
            old,
            predictor.version,
            folder,
            time.perf_counter() - started,
        )
