"""The runtime's ops, one module per family; importing this package declares them all in
``runtime.registry.OPS`` (the order here is the order of ``docs/IR.md``'s op table).

- ``binary``: ``quantize``, ``dyquantize`` (float -> bits) and the binary producers ``bconv2d``,
  ``bdense`` (bits -> integer-valued float);
- ``layers``: the float producers ``conv2d``, ``dense`` and the per-channel ``affine``;
- ``activations``: ``prelu``, ``rprelu``, ``dyprelu``, ``relu``, ``clamp``, ``leaky_relu``;
- ``elementwise``: ``silu``, ``hardswish``, ``hardsigmoid``, ``sigmoid``, ``gelu``, ``mul``;
- ``tensor``: ``add``, ``concat``, ``flatten``, ``upsample_nearest``;
- ``pooling``: ``maxpool2d``, ``avgpool2d``, ``global_avgpool``, ``adaptive_avgpool2d``,
  ``adaptive_maxpool2d``;
- ``shape``: ``upsample_bilinear``, ``channel_shuffle``, ``layernorm_channels``,
  ``channel_slice``.

Implementations work on the runtime's layout: float values NHWC (rank 4) or [N, F] (rank 2),
bits uint64 with channels packed along the last axis; per-channel parameters broadcast along
the last axis, the channel axis in both layouts.
"""

# isort: skip_file
# (the import order is the declaration order, which is the order of docs/IR.md's table)
from runtime.ops import binary
from runtime.ops import layers
from runtime.ops import activations
from runtime.ops import elementwise
from runtime.ops import tensor
from runtime.ops import pooling
from runtime.ops import shape

__all__ = ["activations", "binary", "elementwise", "layers", "pooling", "shape", "tensor"]
