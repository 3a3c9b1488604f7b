"""The ONNX file's bytes depend on the model, not on the order a converter listed its nodes."""

from __future__ import annotations

import random

import pytest

from stream.predictor import ONNX_FILE, resolve_artifact

onnx = pytest.importorskip("onnx")


def test_shuffled_node_order_gives_the_same_canonical_bytes() -> None:
    from models.artifact import canonical_onnx

    path = resolve_artifact("") / ONNX_FILE
    reference = canonical_onnx(onnx.load(str(path))).SerializeToString()
    rng = random.Random(0)
    for _ in range(3):
        proto = onnx.load(str(path))
        nodes = [type(n).FromString(n.SerializeToString()) for n in proto.graph.node]
        # rename every inner tensor and reorder the nodes (a topological order is not needed
        # for the canonical form to be computed; ONNX checks run on the result)
        inner = {o for n in nodes for o in n.output} - {o.name for o in proto.graph.output}
        alias = {name: f"x{rng.randrange(10**9)}_{i}" for i, name in enumerate(sorted(inner))}
        for n in nodes:
            n.input[:] = [alias.get(x, x) for x in n.input]
            n.output[:] = [alias.get(x, x) for x in n.output]
        rng.shuffle(nodes)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        assert canonical_onnx(proto).SerializeToString() == reference
    onnx.checker.check_model(onnx.load_from_string(reference))
