"""Peer engines for benchmarks/bench_peers.py, run in the peers' own venv (``.venv-peers``).

Never imports torch or this project's packages: TensorFlow 2.16 (with tf-keras), Larq, Larq
Compute Engine (LCE) and onnxruntime only. The driver starts this script once and talks to it
in JSON lines (one request on stdin, one answer on stdout):

- ``{"cmd": "load", "threads": [1, 2], "onnx": path or null}``: builds a Bi-Real-18 in Larq,
  converts it with ``larq_compute_engine.convert_keras_model`` and makes one LCE interpreter
  per thread count; opens the ONNX file in one onnxruntime session per thread count. Answers
  the versions, the converted model's op census, its size, and an error text per engine
  that could not be loaded (that engine is then skipped, the others still run).
- ``{"cmd": "time", "engine": "lce" | "ort", "threads": n, "warm": k}``: one batch-1
  inference, timed here around the engine call alone (no pipe or JSON cost), after k untimed
  ones right before it: ``{"seconds": t}``.
- ``{"cmd": "ort_logits"}``: onnxruntime's logits of the fixed input (seed 0, NCHW), so the
  driver can check the export against torch.
- ``{"cmd": "quit"}``.

The Larq Bi-Real-18 has the topology of benchmarks/bench_bireal18.py, NHWC: float 7x7/2 stem
conv (3 -> 64) + BN + ReLU + maxpool 3x3/2; four stages of two BasicBlocks (64, 128, 256, 512
channels), every 3x3 conv binary, ``x -> sign -> bconv 3x3 -> BN -> + shortcut``; the
downsampling shortcut AvgPool2D(2) -> float 1x1 conv -> BN; global average pool -> dense 1000.
The binary convs are ``larq.layers.QuantConv2D(input_quantizer="ste_sign",
kernel_quantizer="ste_sign", kernel_constraint="weight_clip", padding="same",
pad_values=1.0, use_bias=False)``: LCE folds each following BN into the bconv's output
transform, and one-padding (pad value +1 in the sign domain) needs no padding correction in
its kernels, where zero-padding does. No activation after the add (Bi-Real Net as in Larq's
zoo): our runtime's blocks end in an RPReLU, so LCE does a little less work per block here.
Weights are random (Keras initialisers, BN at its defaults): the speed does not depend on them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import traceback
from collections import Counter
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq 0.13 needs Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from timing import time_call
from worker_loop import serve  # benchmarks/worker_loop.py, beside this script

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
SIZE = 224


def larq_bireal18(num_classes: int = 1000, size: int = SIZE) -> Any:
    """The Bi-Real-18 above as a tf-keras ``Model`` with input (1, size, size, 3)."""
    import larq as lq
    import tensorflow as tf

    keras = tf.keras
    tf.random.set_seed(0)

    def bn(x):
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    def binary_conv(x, out_channels: int, stride: int):
        return lq.layers.QuantConv2D(
            out_channels,
            3,
            strides=stride,
            padding="same",
            pad_values=1.0,
            input_quantizer="ste_sign",
            kernel_quantizer="ste_sign",
            kernel_constraint="weight_clip",
            use_bias=False,
        )(x)

    inputs = keras.Input((size, size, 3), batch_size=1)
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.MaxPool2D(3, strides=2, padding="same")(keras.layers.ReLU()(bn(x)))
    for width, stride in STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            shortcut = x
            if s > 1:
                pooled = keras.layers.AvgPool2D(2)(x)
                shortcut = bn(keras.layers.Conv2D(width, 1, use_bias=False)(pooled))
            x = keras.layers.Add()([bn(binary_conv(x, width, s)), shortcut])
            x = keras.layers.Add()([bn(binary_conv(x, width, 1)), x])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def op_census(flatbuffer: bytes) -> dict[str, int]:
    """Count of each op in the converted model (TFLite's analyzer text, parsed)."""
    import tensorflow as tf

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer)
    return dict(Counter(re.findall(r"Op#\d+ (\w+)", text.getvalue())).most_common())


class Engines:
    """The loaded peer engines, one instance of each per thread count."""

    def __init__(self) -> None:
        self.lce: dict[int, Any] = {}
        self.ort: dict[int, Any] = {}
        self.ort_input = ""
        rng = np.random.default_rng(0)
        self.x_nhwc = rng.standard_normal((1, SIZE, SIZE, 3)).astype(np.float32)
        self.x_nchw = np.ascontiguousarray(self.x_nhwc.transpose(0, 3, 1, 2))

    def load(self, threads: list[int], onnx_path: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {"versions": {}, "errors": {}}
        try:
            info.update(self._load_lce(threads, info["versions"]))
        except Exception:  # report any failure as text, keep the other engine
            info["errors"]["lce"] = traceback.format_exc(limit=3).strip()
        if onnx_path is None:
            info["errors"]["ort"] = "no ONNX file (the export in the driver failed)"
        else:
            try:
                self._load_ort(threads, onnx_path, info["versions"])
            except Exception:
                info["errors"]["ort"] = traceback.format_exc(limit=3).strip()
        return info

    def _load_lce(self, threads: list[int], versions: dict[str, str]) -> dict[str, Any]:
        import larq
        import larq_compute_engine as lce
        import tensorflow as tf
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        versions.update(tensorflow=tf.__version__, larq=larq.__version__, lce=lce.__version__)
        start = time.perf_counter()
        flatbuffer = lce.convert_keras_model(larq_bireal18())
        convert_s = time.perf_counter() - start
        # use_indirect_bgemm: LCE's optimised indirect-BGEMM bconv kernel (its im2col BGEMM
        # and the reference kernel were both slower here); use_xnnpack off (TFLite's own
        # float kernels): the signature of the installed 0.16.0 is
        # (flatbuffer_model, num_threads=1, use_reference_bconv=False,
        #  use_indirect_bgemm=False, use_xnnpack=False)
        for n in threads:
            self.lce[n] = Interpreter(
                flatbuffer,
                num_threads=n,
                use_reference_bconv=False,
                use_indirect_bgemm=True,
                use_xnnpack=False,
            )
        out = self.lce[threads[0]].interpreter.predict([self.x_nhwc])[0]
        return {
            "lce_ops": op_census(flatbuffer),
            "lce_bytes": len(flatbuffer),
            "lce_convert_s": convert_s,
            "lce_output_shape": list(out.shape),
        }

    def _load_ort(self, threads: list[int], onnx_path: str, versions: dict[str, str]) -> None:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
        for n in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = n
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.ort[n] = ort.InferenceSession(
                onnx_path, options, providers=["CPUExecutionProvider"]
            )
        self.ort_input = self.ort[threads[0]].get_inputs()[0].name

    def ort_logits(self) -> list[float]:
        """onnxruntime's logits of the shared input (the driver compares them with torch's)."""
        session = next(iter(self.ort.values()))
        return session.run(None, {self.ort_input: self.x_nchw})[0].ravel().tolist()

    def time(self, engine: str, threads: int, warm: int = 0) -> float:
        """One inference timed, after ``warm`` untimed ones right before it."""
        if engine == "lce":
            return time_call(self.lce[threads].interpreter.predict, [self.x_nhwc], warm=warm)
        return time_call(self.ort[threads].run, None, {self.ort_input: self.x_nchw}, warm=warm)


def main() -> None:
    engines = Engines()
    serve({
        "load": lambda r: engines.load(r["threads"], r.get("onnx")),
        "time": lambda r: {"seconds": engines.time(r["engine"], r["threads"], r.get("warm", 0))},
        "ort_logits": lambda r: {"logits": engines.ort_logits()},
    })


if __name__ == "__main__":
    main()
