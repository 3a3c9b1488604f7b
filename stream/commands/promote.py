"""`tickcast promote`: make the challenger (or a named version) the served model.

Writes the folder of artifacts' CURRENT (atomically: a new file renamed over the old), after
the artifact passes the same checks a service applies at start. Running services notice the
changed CURRENT within seconds and hot-reload between batches (stream/reload.py), losing and
duplicating nothing; their challenger then equals their champion and is no longer run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stream import config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "version",
        nargs="?",
        help="an artifact version in the folder of artifacts (default: model.challenger)",
    )


def run(args: argparse.Namespace) -> int:
    from stream.errors import ConfigError, ModelError
    from stream.predictor import (
        MANIFEST,
        artifacts_dir,
        challenger_dir,
        resolve_artifact,
        verify_artifact,
    )

    settings = config.load(args.config)
    folder_of_artifacts = artifacts_dir(settings.model)
    if settings.model.path and not (Path(settings.model.path) / "CURRENT").is_file():
        # Services pinned to one artifact follow no CURRENT: rewriting one would change the
        # model of every service that does follow it, and none of these.
        raise ConfigError(
            f"config error: model.path {settings.model.path} names one artifact, not a folder of"
            " artifacts with a CURRENT file; promote changes CURRENT, which such services do not"
            " follow: point model.path at the folder (or change model.path itself)"
        )
    if args.version:
        chosen = folder_of_artifacts / args.version
        if not (chosen / MANIFEST).is_file():
            raise ModelError(f"no artifact {args.version!r} in {folder_of_artifacts}")
    else:
        found = challenger_dir(settings.model)
        if found is None:
            raise ConfigError(
                "config error: nothing to promote: name a version, or set model.challenger"
                " (TICKCAST_MODEL__CHALLENGER)"
            )
        chosen = found
    if chosen.resolve().parent != folder_of_artifacts.resolve():
        raise ModelError(
            f"{chosen} is not in {folder_of_artifacts}, whose CURRENT the services follow: copy"
            " it there first"
        )
    verify_artifact(chosen, window_size=settings.window.size, horizon=settings.model.horizon)
    current = folder_of_artifacts / "CURRENT"
    before = resolve_artifact(str(folder_of_artifacts)).name if current.is_file() else "-"
    if before == chosen.name:
        print(f"{chosen.name} is already CURRENT in {folder_of_artifacts}")
        return 0
    _replace(current, chosen.name + "\n")
    print(
        f"promoted {chosen.name} (was {before}) in {current}; running services reload it"
        " between batches within seconds"
    )
    return 0


def _replace(path: Path, text: str) -> None:
    """Write `path` so that a reader sees the old content or the new, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
