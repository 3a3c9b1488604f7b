"""The resident model behind one interface, with the artifact checks that guard it.

    Predictor            the protocol the pipeline calls: predict_batch(windows) -> quantiles
    ├── OnnxPredictor        ONNX Runtime; the default: no TensorFlow, fast start, small memory
    └── TensorFlowPredictor  the reference: the Keras model in a compiled tf.function

An artifact is a folder `models/artifacts/<version>/` with manifest.json, model.keras and
model.onnx. The version is the first 12 hex digits of the sha256 of model.onnx; the manifest also
carries the sha256 of every file. Loading checks the manifest against the settings (window size,
horizon) and the files against their hashes, so a forecast's `model_version` always names the
weights that made it.

Both backends take raw prices (n, window) and apply the same input transform, log(p_i / p_last),
in float64 before the model's float32; any constant scaling lives inside the model itself.

A window's output does not depend on its batch (DESIGN.md, Wire contracts): a redelivered window
recomputed after its cache entry expired must give the first forecast bit for bit. ONNX Runtime is
not batch-invariant by itself: its element-wise Softplus runs rows in vector blocks of 4 and the
remainder through a scalar exp that differs in the last bits, so a row's result depended on the
batch size (1,214 of 3,000 gold windows differed between batch 1 and one batch of 3,000). No
session option changes that (graph optimisation off and use_deterministic_compute were tried). So
every model call has a fixed shape, or one the kernels treat alike: with one intra-op thread (the
default) a call's rows are padded to a multiple of PAD_ROWS with copies of a real window, so no
real row falls in a scalar remainder (padding is cheap at small batches); with several threads,
whose split points depend on the shape, every call is exactly CHUNK_ROWS rows.
Both give the same bits as each other, for any batch, position, neighbours and thread count.
TensorFlow (oneDNN) varies with the batch size too, and runs in CHUNK_ROWS chunks as well.
All of it is held bitwise by tests/model/test_batch_invariance.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from stream.config import ModelSettings
from stream.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INPUT_NAME = "window"
#: The only input transform this code knows how to apply; the manifest must name it.
INPUT_TRANSFORM = "log(p_i / p_last)"
VERSION_LENGTH = 12
#: Rows in every model call with several intra-op threads (and TensorFlow): one input shape, so
#: one choice of kernels and thread split for every window. Padding alone is not enough there: one
#: call of 100,000 rows on 8 threads splits the Softplus at other boundaries (42 rows differed).
#: 32 keeps throughput at large batches (`tickcast bench model --batch-sizes 256,1000`).
CHUNK_ROWS = 32
#: With one intra-op thread a call runs its rows in order and only the tail can take the scalar
#: path: padding the rows to a multiple of 8 (24 outputs, whole vectors of 4 or 8 floats) makes
#: every row take the vector path (held bitwise by tests/model/test_batch_invariance.py).
#: Changing either constant may change forecasts in the last bits.
PAD_ROWS = 8

FloatArray = npt.NDArray[np.float64]


class Predictor(Protocol):
    version: str
    window: int
    horizon: int
    quantiles: tuple[float, ...]
    interval: float

    def predict_batch(self, windows: FloatArray) -> FloatArray:
        """Raw price windows (n, window) -> next-step log-return quantiles (n, q), ascending."""
        ...


@dataclass(frozen=True, slots=True)
class Manifest:
    folder: Path
    version: str
    window: int
    horizon: int
    quantiles: tuple[float, ...]
    interval: float
    files: dict[str, str]
    raw: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_of(onnx_path: Path) -> str:
    """The artifact version: the content hash of its ONNX file."""
    return sha256_file(onnx_path)[:VERSION_LENGTH]


def shipped_artifacts_dir() -> Path:
    """models/artifacts of the installed `models` package."""
    import models

    return Path(models.__file__).resolve().parent / "artifacts"


def resolve_artifact(path: str | Path = "") -> Path:
    """The artifact folder: `path` if it is one; the one a CURRENT file in `path` names, if `path`
    is a folder of artifacts; else the one the shipped models/artifacts/CURRENT names."""
    if str(path) and not (Path(path) / "CURRENT").is_file():
        folder = Path(path)
    else:
        current = (Path(path) if str(path) else shipped_artifacts_dir()) / "CURRENT"
        try:
            name = current.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ModelError(
                f"no model artifact: {current} does not exist (train one with `tickcast train"
                " --set-current`, or set model.path)"
            ) from None
        if not name:
            raise ModelError(f"no model artifact: {current} is empty")
        folder = current.parent / name
    if not (folder / MANIFEST).is_file():
        raise ModelError(f"no model artifact at {folder}: {folder / MANIFEST} does not exist")
    return folder


def artifacts_dir(model: ModelSettings) -> Path:
    """The folder of artifacts whose CURRENT names the served one: model.path when it holds a
    CURRENT file, else the shipped models/artifacts (a model.path naming one artifact: its
    parent)."""
    if not model.path:
        return shipped_artifacts_dir()
    path = Path(model.path)
    return path if (path / "CURRENT").is_file() else path.parent


def challenger_dir(model: ModelSettings) -> Path | None:
    """model.challenger's artifact folder (a folder, or a version in the folder of artifacts);
    None when no challenger is configured."""
    if not model.challenger:
        return None
    folder = Path(model.challenger)
    if not (folder / MANIFEST).is_file():
        folder = artifacts_dir(model) / model.challenger
    if not (folder / MANIFEST).is_file():
        raise ModelError(
            f"model.challenger {model.challenger!r}: no artifact there, nor a version of that"
            f" name in {artifacts_dir(model)}"
        )
    return folder


def load_challenger(model: ModelSettings, window_size: int) -> Predictor | None:
    """The challenger's predictor (same backend and checks as the champion's), if configured."""
    folder = challenger_dir(model)
    if folder is None:
        return None
    predictor = load_predictor(model.model_copy(update={"path": str(folder)}), window_size)
    # One call now, so an artifact whose outputs do not match its manifest fails at start,
    # not on the first batch (where it would only cost the shadow, but silently).
    out = predictor.predict_batch(np.full((1, window_size), 100.0))
    if out.shape != (1, len(predictor.quantiles)):
        raise ModelError(
            f"model.challenger {predictor.version}: outputs of shape {out.shape} where its"
            f" manifest lists {len(predictor.quantiles)} quantiles"
        )
    return predictor


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no model artifact at {folder}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable manifest {path}: {exc}") from None
    try:
        quantiles = tuple(float(q) for q in raw["quantiles"])
        manifest = Manifest(
            folder=folder,
            version=str(raw["version"]),
            window=int(raw["window"]),
            horizon=int(raw["horizon"]),
            quantiles=quantiles,
            interval=float(raw["interval"]),
            files={str(k): str(v) for k, v in dict(raw["files"]).items()},
            raw=raw,
        )
        transform = str(raw["input_transform"]["formula"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"manifest {path} is missing or has a bad field: {exc}") from None
    if transform != INPUT_TRANSFORM:
        raise ModelError(
            f"manifest {path}: input transform {transform!r} is not {INPUT_TRANSFORM!r}"
        )
    try:
        # The columns the stream and the API serve: a manifest without them is refused at load
        # (start, reload, promote), not at the first batch.
        quantile_columns(manifest.quantiles, manifest.interval)
    except ModelError as exc:
        raise ModelError(f"manifest {path}: {exc}") from None
    return manifest


def quantile_columns(quantiles: Sequence[float], interval: float) -> tuple[int, int, int]:
    """(lower, median, upper) output columns of a model with these quantiles whose forecasts carry
    a central `interval` (0.8: the 0.1 and 0.9 quantiles), the stream's and the HTTP API's
    (stream/serve). Found by value, not position: a model with more quantiles (0.05 .. 0.95)
    still serves the interval its manifest names."""
    qs = list(quantiles)
    if any(a >= b for a, b in itertools.pairwise(qs)):
        raise ModelError(f"model quantiles {qs} must be ascending")

    def column(q: float) -> int:
        found = [i for i, have in enumerate(qs) if abs(have - q) < 1e-9]
        if not found:
            raise ModelError(
                f"model quantiles {qs} have no {q:g} quantile (the median, or a bound of the"
                f" manifest's {interval:g} interval)"
            )
        return found[0]

    tail = (1.0 - interval) / 2.0
    return column(tail), column(0.5), column(1.0 - tail)


def verify_artifact(
    folder: Path, *, window_size: int, horizon: int, files: tuple[str, ...] = (ONNX_FILE,)
) -> Manifest:
    """Read the manifest; check settings, version and the hashes of `files` (ModelError if not)."""
    manifest = read_manifest(folder)
    if manifest.window != window_size:
        raise ModelError(
            f"model artifact {folder} was trained on windows of {manifest.window} prices,"
            f" but window.size is {window_size}"
        )
    if manifest.horizon != horizon:
        raise ModelError(
            f"model artifact {folder} forecasts horizon {manifest.horizon},"
            f" but model.horizon is {horizon}"
        )
    for name in files:
        path = folder / name
        if not path.is_file():
            raise ModelError(f"model artifact {folder} is incomplete: {path} does not exist")
        expected = manifest.files.get(name)
        actual = sha256_file(path)
        if expected != actual:
            raise ModelError(
                f"model artifact {folder}: sha256 of {name} is {actual},"
                f" but the manifest says {expected}"
            )
    actual_version = version_of(folder / ONNX_FILE) if ONNX_FILE in files else None
    if actual_version is not None and actual_version != manifest.version:
        raise ModelError(
            f"model artifact {folder}: version in manifest is {manifest.version},"
            f" but {ONNX_FILE} hashes to {actual_version}"
        )
    return manifest


def relative_log_window(windows: FloatArray, window: int) -> npt.NDArray[np.float32]:
    """Raw prices (n, window) -> model input (n, window, 1) float32: log(p_i / p_last)."""
    arr = np.asarray(windows, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != window:
        raise ModelError(f"expected windows of shape (n, {window}), got {arr.shape}")
    rel = np.log(arr / arr[:, -1:])
    return rel.astype(np.float32)[:, :, None]


class _Base:
    """What both backends share: manifest fields and the batch-shape contract."""

    def __init__(self, manifest: Manifest) -> None:
        self.version = manifest.version
        self.window = manifest.window
        self.horizon = manifest.horizon
        self.quantiles = manifest.quantiles
        self.interval = manifest.interval
        self.folder = manifest.folder
        #: rows per model call; None: one call per batch, its rows padded to PAD_ROWS
        self.chunk_rows: int | None = CHUNK_ROWS

    def _run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        raise NotImplementedError

    def predict_batch(self, windows: FloatArray) -> FloatArray:
        """Windows -> quantiles, each row the same bits whatever batch the window came in."""
        inputs = relative_log_window(windows, self.window)
        rows = inputs.shape[0]
        if rows == 0:
            return np.zeros((0, len(self.quantiles)), dtype=np.float64)
        step = self.chunk_rows
        padded = -(-rows // (step or PAD_ROWS)) * (step or PAD_ROWS)
        if padded != rows:
            # copies of a real window, not zeros: padding never feeds the model a value it never saw
            filler = np.broadcast_to(inputs[:1], (padded - rows, *inputs.shape[1:]))
            inputs = np.concatenate([inputs, filler])
        step = step or padded
        chunks: list[FloatArray] = []
        for start in range(0, padded, step):
            out = np.asarray(self._run(inputs[start : start + step]), dtype=np.float64)
            if out.shape != (step, len(self.quantiles)):
                raise ModelError(
                    f"model {self.version} returned shape {out.shape} for a call of {step}"
                    f" windows; expected {(step, len(self.quantiles))}"
                )
            chunks.append(out)
        return np.concatenate(chunks)[:rows]


class OnnxPredictor(_Base):
    def __init__(self, manifest: Manifest, intra_op_threads: int = 1) -> None:
        super().__init__(manifest)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.chunk_rows = None if intra_op_threads == 1 else CHUNK_ROWS
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        path = manifest.folder / ONNX_FILE
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on a corrupt file
            raise ModelError(f"cannot load {path}: {exc}") from None
        self._output = self._session.get_outputs()[0].name

    def _run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        result = self._session.run([self._output], {INPUT_NAME: inputs})
        return np.asarray(result[0])


class TensorFlowPredictor(_Base):
    """The reference backend: the Keras model, called through one compiled tf.function."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        import keras
        import tensorflow as tf

        path = manifest.folder / KERAS_FILE
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as exc:  # Keras raises many types for a corrupt or foreign file
            raise ModelError(f"cannot load {path}: {exc}") from None

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=(tf.TensorSpec((None, self.window, 1), tf.float32, name=INPUT_NAME),),
            reduce_retracing=True,
        )
        def forward(x: Any) -> Any:
            return model(x, training=False)

        self._model = model
        self._forward = forward

    def _run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return np.asarray(self._forward(inputs).numpy())


def load_predictor(model: ModelSettings, window_size: int) -> Predictor:
    """Locate, verify and load the artifact with the configured backend."""
    folder = resolve_artifact(model.path)
    if model.backend == "tensorflow":
        manifest = verify_artifact(
            folder, window_size=window_size, horizon=model.horizon, files=(ONNX_FILE, KERAS_FILE)
        )
        predictor: Predictor = TensorFlowPredictor(manifest)
    else:
        manifest = verify_artifact(folder, window_size=window_size, horizon=model.horizon)
        predictor = OnnxPredictor(manifest, intra_op_threads=model.intra_op_threads)
    log.info(
        'model loaded version=%s backend=%s path="%s"', predictor.version, model.backend, folder
    )
    return predictor
