"""A Bi-Real-18 network written directly as a packed model (docs/IR.md), random weights.

Layout (ResNet-18, 224x224 input): float stem conv 7x7/2 (3 -> 64) + BN (affine) + ReLU +
maxpool 3x3/2; four stages of two BasicBlocks each (64, 128, 256, 512 channels), every 3x3
conv binary with its own shortcut (Bi-Real Net):

    x -> quantize -> bconv2d 3x3 -> affine (folded BN and alpha) -> + shortcut -> RPReLU

RPReLU after the add as in ReActNet/DyBNN (Bi-Real itself has none; it costs one fused
epilogue step here). Downsampling shortcuts stay float in Bi-Real/ReActNet style:
AvgPool2d(2) -> 1x1 conv -> BN (affine). Head: global average pool -> flatten -> float fc
(512 -> 1000). Built from numpy arrays with the registry's node builder
(runtime.registry.make_node, no torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.registry import make_node
from runtime.schema import Graph, Node, TensorSpec

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


class _Writer:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []

    def f32(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def add(self, op: str, name: str, inputs: list[str], attrs=None, params=None) -> str:
        self.nodes.append(make_node(op, name, inputs, attrs, params))
        return name

    def affine(self, name: str, x: str, channels: int) -> str:
        params = {"scale": self.f32(channels, scale=0.05), "bias": self.f32(channels, scale=0.1)}
        return self.add("affine", name, [x], {"channels": channels}, params)

    def binary_conv(self, name: str, x: str, c: int, o: int, stride: int, shortcut: str) -> str:
        q = self.add(
            "quantize", f"{name}.quant", [x], {"channels": c}, {"threshold": self.f32(c, scale=0.1)}
        )
        weight = self.rng.integers(
            0, np.iinfo(np.uint64).max, size=(o, 3, 3, c // 64), dtype=np.uint64, endpoint=True
        )
        conv = self.add(
            "bconv2d",
            f"{name}.conv",
            [q],
            {
                "in_channels": c,
                "out_channels": o,
                "kernel": [3, 3],
                "stride": [stride, stride],
                "padding": [1, 1],
                "pad_value": 0,
            },
            {"weight": weight},
        )
        summed = self.add("add", f"{name}.add", [self.affine(f"{name}.bn", conv, o), shortcut])
        return self.add(
            "rprelu",
            f"{name}.act",
            [summed],
            {"channels": o},
            {
                "gamma": self.f32(o, scale=0.1),
                "zeta": self.f32(o, scale=0.1),
                "beta": np.full(o, 0.25, np.float32),
            },
        )

    def downsample(self, name: str, x: str, c: int, o: int) -> str:
        pooled = self.add(
            "avgpool2d",
            f"{name}.pool",
            [x],
            {
                "kernel": [2, 2],
                "stride": [2, 2],
                "padding": [0, 0],
                "ceil_mode": False,
                "count_include_pad": True,
            },
        )
        conv = self.add(
            "conv2d",
            f"{name}.conv",
            [pooled],
            {
                "in_channels": c,
                "out_channels": o,
                "kernel": [1, 1],
                "stride": [1, 1],
                "padding": [0, 0],
            },
            {"weight": self.f32(o, c, 1, 1, scale=c**-0.5)},
        )
        return self.affine(f"{name}.bn", conv, o)


def bireal18(num_classes: int = 1000, size: int = 224, seed: int = 0):
    """Return (graph, tensors) of a Bi-Real-18 for ``runtime.format.write_model``."""
    w = _Writer(seed)
    stem = w.add(
        "conv2d",
        "conv1",
        ["input"],
        {
            "in_channels": 3,
            "out_channels": 64,
            "kernel": [7, 7],
            "stride": [2, 2],
            "padding": [3, 3],
        },
        {"weight": w.f32(64, 3, 7, 7, scale=0.1)},
    )
    x = w.add("relu", "relu", [w.affine("bn1", stem, 64)])
    x = w.add(
        "maxpool2d",
        "maxpool",
        [x],
        {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": False},
    )
    channels = 64
    for stage, (width, stride) in enumerate(STAGES, start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            shortcut = w.downsample(f"{prefix}.downsample", x, channels, width) if s > 1 else x
            x = w.binary_conv(f"{prefix}.conv1", x, channels, width, s, shortcut)
            x = w.binary_conv(f"{prefix}.conv2", x, width, width, 1, x)
            channels = width
    x = w.add("flatten", "flatten", [w.add("global_avgpool", "avgpool", [x])])
    logits = w.add(
        "dense",
        "fc",
        [x],
        {"in_features": 512, "out_features": num_classes},
        {
            "weight": w.f32(num_classes, 512, scale=512**-0.5),
            "bias": w.f32(num_classes, scale=0.01),
        },
    )
    program = Graph(
        inputs=[TensorSpec("input", (None, 3, size, size))],
        outputs=[TensorSpec(logits, (None, num_classes))],
        nodes=w.nodes,
    )
    return program.to_file_parts()


def ideal_bytes(graph: dict[str, Any], tensors: dict[str, np.ndarray]) -> int:
    """1 bit per binary weight (in_channels x kh x kw per output) + 32 bits per float value."""
    bits = 0
    for node in graph["nodes"]:
        for key in node["params"].values():
            array = tensors[key]
            if array.dtype == np.uint64:
                bits += array.size // array.shape[-1] * node["attrs"]["in_channels"]
            else:
                bits += 32 * array.size
    return bits // 8
