"""Build small random packed models (docs/IR.md graphs + tensors) in numpy, for the tests.

    b = IRBuilder(seed=0)
    x = b.input([3, 8, 8])
    h = b.quantize(x)
    h = b.bconv2d(h, 16, kernel=3, padding=1)
    b.output(b.affine(h))
    graph, tensors = b.build()          # or b.to_bytes()

Every method appends one node with random parameters and returns the new value's name; the
builder asks the runtime's op registry for each value's kind and shape (NCHW without batch),
so parameters get the right sizes and a builder bug shows up as the registry's error.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from runtime.format import write_model
from runtime.registry import get
from runtime.schema import ValueInfo


def pack_pm1(signs: np.ndarray) -> np.ndarray:
    """Pack a +-1 array along its last axis into uint64 words (bit 1 = +1, padding 0)."""
    *lead, channels = signs.shape
    n_words = -(-channels // 64)
    bits = np.zeros((*lead, n_words * 64), np.uint64)
    bits[..., :channels] = signs > 0
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return (bits.reshape(*lead, n_words, 64) * weights).sum(axis=-1, dtype=np.uint64)


class IRBuilder:
    """Accumulates nodes and tensors of one graph; shapes in NCHW terms without the batch."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.kinds: dict[str, str] = {}

    # -- plumbing ---------------------------------------------------------------------------
    def input(self, shape: list[int], name: str = "input") -> str:
        self.inputs.append({"name": name, "shape": [None, *shape], "dtype": "float32"})
        self.shapes[name] = tuple(shape)
        self.kinds[name] = "float"
        return name

    def output(self, value: str) -> str:
        self.outputs.append({"name": value, "shape": [None, *self.shapes[value]]})
        return value

    def node(
        self,
        op: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
    ) -> str:
        """Append ``op``; its output's kind and shape come from the registry's declaration."""
        index = len(self.nodes)
        ins = [ValueInfo(self.kinds[x], self.shapes[x]) for x in inputs]
        _, value, _ = get(op).check(f"builder node {index}", attrs or {}, ins)
        name = f"n{index}.{op}"
        out = f"v{index}"
        keys = {}
        for role, array in (params or {}).items():
            keys[role] = f"{name}.{role}"
            self.tensors[keys[role]] = array
        self.nodes.append(
            {
                "op": op,
                "name": name,
                "inputs": inputs,
                "outputs": [out],
                "attrs": attrs or {},
                "params": keys,
            }
        )
        self.shapes[out] = value.shape
        self.kinds[out] = value.kind
        return out

    def build(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        graph = {
            "format": "binarize.packed",
            "version": 1,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "nodes": self.nodes,
        }
        return copy.deepcopy(graph), dict(self.tensors)

    def to_bytes(self) -> bytes:
        graph, tensors = self.build()
        return write_model(None, graph, tensors)

    def graph_json(self) -> str:
        return json.dumps(self.build()[0])

    def f32(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def signs(self, *shape: int) -> np.ndarray:
        return np.where(self.rng.random(shape) < 0.5, -1, 1).astype(np.int8)

    # -- ops --------------------------------------------------------------------------------
    def quantize(self, x: str, signed: bool = False) -> str:
        c = self.shapes[x][0]
        params = {"threshold": self.f32(c, scale=0.3)}
        if signed:
            params["sign"] = self.signs(c)
        return self.node("quantize", [x], {"channels": c}, params)

    def _hyper(self, c: int, heads: int, hidden: int) -> dict[str, np.ndarray]:
        return {
            "fc1_weight": self.f32(hidden, c, scale=0.5),
            "fc1_bias": self.f32(hidden),
            "fc2_weight": self.f32(heads * c, hidden, scale=0.5),
            "fc2_bias": self.f32(heads * c, scale=0.2),
        }

    def dyquantize(self, x: str, hidden: int = 4, activation: str = "relu") -> str:
        c = self.shapes[x][0]
        attrs = {"channels": c, "hidden": hidden, "activation": activation}
        return self.node("dyquantize", [x], attrs, self._hyper(c, 1, hidden))

    def bconv2d(
        self,
        x: str,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 1,
        pad_value: int = 0,
    ) -> str:
        c = self.shapes[x][0]
        weight = pack_pm1(self.signs(out_channels, kernel, kernel, c))
        attrs = {
            "in_channels": c,
            "out_channels": out_channels,
            "kernel": [kernel, kernel],
            "stride": [stride, stride],
            "padding": [padding, padding],
            "pad_value": pad_value,
        }
        return self.node("bconv2d", [x], attrs, {"weight": weight})

    def bdense(self, x: str, out_features: int) -> str:
        (f,) = self.shapes[x]
        weight = pack_pm1(self.signs(out_features, f))
        attrs = {"in_features": f, "out_features": out_features}
        return self.node("bdense", [x], attrs, {"weight": weight})

    def conv2d(
        self,
        x: str,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> str:
        c = self.shapes[x][0]
        params = {"weight": self.f32(out_channels, c // groups, kernel, kernel, scale=0.3)}
        if bias:
            params["bias"] = self.f32(out_channels)
        attrs = {
            "in_channels": c,
            "out_channels": out_channels,
            "kernel": [kernel, kernel],
            "stride": [stride, stride],
            "padding": [padding, padding],
            "dilation": [dilation, dilation],
            "groups": groups,
        }
        return self.node("conv2d", [x], attrs, params)

    def dense(self, x: str, out_features: int, bias: bool = True) -> str:
        (f,) = self.shapes[x]
        params = {"weight": self.f32(out_features, f, scale=0.3)}
        if bias:
            params["bias"] = self.f32(out_features)
        attrs = {"in_features": f, "out_features": out_features}
        return self.node("dense", [x], attrs, params)

    def affine(self, x: str) -> str:
        c = self.shapes[x][0]
        params = {"scale": self.f32(c, scale=0.2), "bias": self.f32(c)}
        return self.node("affine", [x], {"channels": c}, params)

    def prelu(self, x: str, shared: bool = False) -> str:
        c = self.shapes[x][0]
        weight = self.f32(1 if shared else c, scale=0.3)
        return self.node("prelu", [x], {"channels": c}, {"weight": weight})

    def rprelu(self, x: str) -> str:
        c = self.shapes[x][0]
        params = {
            "gamma": self.f32(c, scale=0.3),
            "zeta": self.f32(c, scale=0.3),
            "beta": self.f32(c, scale=0.3),
        }
        return self.node("rprelu", [x], {"channels": c}, params)

    def dyprelu(self, x: str, hidden: int = 4, activation: str = "relu") -> str:
        c = self.shapes[x][0]
        params = {**self._hyper(c, 2, hidden), "beta": self.f32(c, scale=0.3)}
        attrs = {"channels": c, "hidden": hidden, "activation": activation}
        return self.node("dyprelu", [x], attrs, params)

    def unary(self, op: str, x: str, **attrs: Any) -> str:
        """relu, clamp (min, max), leaky_relu (negative_slope), global_avgpool, flatten."""
        return self.node(op, [x], attrs)

    def add(self, a: str, b: str) -> str:
        return self.node("add", [a, b])

    def concat(self, xs: list[str], axis: int = 1) -> str:
        return self.node("concat", xs, {"axis": axis})

    def pool(
        self,
        op: str,
        x: str,
        kernel: int,
        stride: int,
        padding: int = 0,
        ceil_mode: bool = False,
        **extra: Any,
    ) -> str:
        dilation = extra.get("dilation", 1)
        attrs = {
            "kernel": [kernel, kernel],
            "stride": [stride, stride],
            "padding": [padding, padding],
            "ceil_mode": ceil_mode,
            **extra,
        }
        if "dilation" in extra:
            attrs["dilation"] = [dilation, dilation]
        return self.node(op, [x], attrs)

    def upsample(self, x: str, sh: int, sw: int) -> str:
        return self.node("upsample_nearest", [x], {"scale": [sh, sw]})
