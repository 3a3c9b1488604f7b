"""Write model artifacts: the Keras model, its ONNX export, and the manifest that binds them.

Reading and verifying artifacts is the serving side's job (stream/predictor.py); this module is only
used by train and export, which already run TensorFlow.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stream.predictor import (
    INPUT_NAME,
    INPUT_TRANSFORM,
    KERAS_FILE,
    MANIFEST,
    ONNX_FILE,
    sha256_file,
    version_of,
)

ONNX_OPSET = 17


def export_onnx(model: Any, path: Path, window: int) -> None:
    """Convert a Keras model to ONNX with a dynamic batch axis and input named `window`.

    The graph is written in a canonical form (see `canonical_onnx`), so the same weights always give
    the same bytes and therefore the same version, whichever process exports them.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    # tf2onnx logs every optimisation pass at INFO; the user asked for training, not for those.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = (tf.TensorSpec((None, window, 1), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
    proto = canonical_onnx(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def canonical_onnx(proto: Any) -> Any:
    """Rename nodes and inner tensors by position and order the initializers by first use.

    tf2onnx numbers the nodes it creates from counters whose order varies from run to run, and emits
    initializers in varying order: two exports of identical weights differ in bytes. Names inside
    the graph mean nothing to a runtime, so they are replaced by their position (graph input and
    output names stay), the symbolic batch axis is named `batch`. Shape hints (value_info) are
    dropped; ONNX Runtime infers shapes itself.
    """
    graph = proto.graph
    if any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute):
        return proto  # control flow with subgraphs: not expected here, leave it untouched
    ordered_nodes = [type(n).FromString(n.SerializeToString()) for n in structural_order(graph)]
    del graph.node[:]
    graph.node.extend(ordered_nodes)
    keep = {t.name for t in graph.input} | {t.name for t in graph.output}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for index, node in enumerate(graph.node):
        node.name = f"n{index}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    position = {new: index for index, new in enumerate(names.values())}
    ordered = sorted(graph.initializer, key=lambda t: position.get(t.name, len(position)))
    # copies first: clearing a repeated field releases the messages it holds
    ordered = [type(t).FromString(t.SerializeToString()) for t in ordered]
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    del graph.value_info[:]
    # The batch axis is symbolic; tf2onnx calls it unk__<counter>. Give it one stable name.
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = "batch"
    return proto


def structural_order(graph: Any) -> list[Any]:
    """The graph's nodes in a topological order that depends on structure, not on names.

    A node's signature hashes its op, attributes and, for each input, the signature of the node
    that makes it (with the output index), the bytes of the initializer, or the graph input's
    name. Among nodes ready to run, the smallest signature goes first. So two conversions of the
    same model that list parallel branches in another order give the same sequence.
    """
    import hashlib
    import heapq

    producer = {
        out: (i, k) for i, node in enumerate(graph.node) for k, out in enumerate(node.output)
    }
    weights: dict[str, str] = {}
    for tensor in graph.initializer:
        bare = type(tensor).FromString(tensor.SerializeToString())
        bare.name = ""
        weights[tensor.name] = hashlib.sha256(bare.SerializeToString()).hexdigest()
    signature: dict[int, str] = {}

    def sig(i: int) -> str:
        if i not in signature:
            node = graph.node[i]
            h = hashlib.sha256(f"{node.domain}:{node.op_type}".encode())
            for attr in sorted(node.attribute, key=lambda a: a.name):
                h.update(attr.SerializeToString())
            for name in node.input:
                if name in producer:
                    j, k = producer[name]
                    h.update(f"node:{sig(j)}:{k}".encode())
                elif name in weights:
                    h.update(f"weight:{weights[name]}".encode())
                else:
                    h.update(f"input:{name}".encode())
            signature[i] = h.hexdigest()
        return signature[i]

    waiting = [sum(1 for name in node.input if name in producer) for node in graph.node]
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in producer:
                consumers.setdefault(producer[name][0], []).append(i)
    ready = [(sig(i), i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[Any] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(graph.node[i])
        for j in consumers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (sig(j), j))
    if len(order) != len(graph.node):  # a cycle cannot be a valid ONNX graph; keep it as it is
        return list(graph.node)
    return order


def onnx_op_types(path: Path) -> list[str]:
    import onnx

    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def library_versions() -> dict[str, str]:
    import keras
    import numpy
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


def input_transform() -> dict[str, Any]:
    from models.cnn_bilstm import INPUT_SCALE, OUTPUT_SCALE

    return {
        "formula": INPUT_TRANSFORM,
        "applied_by": "the predictor, in float64, before casting to float32",
        "input_scale": INPUT_SCALE,
        "output_scale": OUTPUT_SCALE,
        "scales_applied_by": "Rescaling layers inside the model (fixed constants, not fitted)",
        "output": "log(p_next / p_last) quantiles; price = last_price * exp(q)",
    }


def write_artifact(
    model: Any,
    root: Path,
    manifest_fields: dict[str, Any],
    *,
    window: int,
    keras_source: Path | None = None,
) -> Path:
    """Save `model` (or copy `keras_source`), export ONNX, hash, and move into root/<version>.

    The folder is assembled under a temporary name and renamed at the end, so a crash never leaves
    a half-written artifact under a real version name.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        if keras_source is not None:
            shutil.copyfile(keras_source, staging / KERAS_FILE)
        else:
            import keras

            model.save(staging / KERAS_FILE)
            # Export what was saved, as `tickcast export` does: a model rebuilt from the file
            # may order parallel branches differently from the one built in memory, and the ONNX
            # bytes (the version) must not depend on which of the two was converted.
            model = keras.saving.load_model(str(staging / KERAS_FILE), compile=False)
        export_onnx(model, staging / ONNX_FILE, window)
        version = version_of(staging / ONNX_FILE)
        manifest = {
            "version": version,
            **manifest_fields,
            "input_transform": input_transform(),
            "onnx": {"opset": ONNX_OPSET, "ops": onnx_op_types(staging / ONNX_FILE)},
            "libraries": library_versions(),
            "files": {name: sha256_file(staging / name) for name in (KERAS_FILE, ONNX_FILE)},
        }
        write_manifest(staging, manifest)
        final = root / version
        if final.exists():
            shutil.rmtree(final)
        staging.chmod(0o755)  # mkdtemp makes it private; an artifact is for everyone to read
        staging.rename(final)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def set_current(root: Path, version: str) -> None:
    (root / "CURRENT").write_text(version + "\n", encoding="utf-8")
