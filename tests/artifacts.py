"""Test artifacts: a folder of artifacts with CURRENT, and a second model derived from the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stream.predictor import MANIFEST, ONNX_FILE, resolve_artifact, sha256_file, version_of


def artifacts_root(tmp: Path) -> tuple[Path, str]:
    """A copy of the shipped artifact in tmp/artifacts/<version>, named by tmp/artifacts/CURRENT."""
    shipped = resolve_artifact("")
    root = tmp / "artifacts"
    shutil.copytree(shipped, root / shipped.name)
    (root / "CURRENT").write_text(shipped.name + "\n")
    return root, shipped.name


def derived_artifact(root: Path, base: str, scale: float = 1.05) -> str:
    """A new artifact whose ONNX weights are the base's scaled by `scale`: another model, with its
    own version, as a retraining would give. Returns the version (not made CURRENT)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(root / base / ONNX_FILE))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and array.size > 1:
            init.CopyFrom(numpy_helper.from_array((array * scale).astype(array.dtype), init.name))
    staging = root / "staging"
    staging.mkdir()
    onnx.save(model, str(staging / ONNX_FILE))
    version = version_of(staging / ONNX_FILE)
    shutil.copy(root / base / "model.keras", staging / "model.keras")
    manifest = json.loads((root / base / MANIFEST).read_text())
    manifest["version"] = version
    manifest["files"] = {name: sha256_file(staging / name) for name in manifest["files"]}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    staging.rename(root / version)
    return version
