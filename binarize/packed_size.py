"""The size of the file ``binarize.pack`` writes, in total and per layer, from the real export.

``summary`` reports these numbers. They are measured, not modelled: the network is lowered
and folded exactly as ``pack`` does (``binarize.pack.lower_for_runtime`` on the example
inputs), serialized with ``runtime.format.write_model`` (no path: nothing is written), and

    file bytes = 8 (header length) + len(safetensors header JSON, padded) + tensor bytes

is the length of those bytes, so the total equals ``len(binarize.pack(...))`` for the same
weights and inputs. The header JSON holds each tensor's dtype, shape and offsets and the
graph JSON (docs/IR.md) as metadata; for a small network it can outweigh the tensors.

Per layer: every runtime node is named after the FX node it was lowered from (a binary layer
``conv`` becomes ``conv.bits`` and ``conv.acc``), so a layer's bytes are those of the tensors
of the nodes whose name, up to the first ``.``, is its FX node's name, after folding: a
BatchNorm folded into the next binarizer's threshold owns no bytes, the threshold is counted
with that binary layer. Binary weights are stored as 64-channel words, so a layer with
``C`` input channels keeps ``64 * ceil(C / 64)`` bits per output and tap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx

from binarize.pack import lower_for_runtime
from runtime.format import write_model


@dataclass(frozen=True)
class ExportedSize:
    """``file_bytes``: the packed file's length; ``node_bytes``: FX node name -> bytes of the
    tensors of the runtime nodes lowered from it; ``tensor_bytes``: all tensors' bytes."""

    file_bytes: int
    node_bytes: dict[str, int]
    tensor_bytes: int

    @property
    def header_bytes(self) -> int:
        """The 8-byte length field plus the header JSON (tensor index and graph)."""
        return self.file_bytes - self.tensor_bytes


def exported_size(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> ExportedSize:
    """Export ``gm`` as ``binarize.pack`` would and measure the bytes (nothing is written).

    Raises ``binarize.ConversionError`` when the network cannot be exported (an op the
    runtime lacks, several example inputs, weights off the CPU or not float32) and
    ``runtime.InvalidModelError`` when the exported graph breaks the file's contract.
    """

    graph, tensors = lower_for_runtime(gm, tuple(inputs)).to_file_parts()
    file_bytes = len(write_model(None, graph, tensors))
    node_bytes: dict[str, int] = {}
    for node in graph["nodes"]:
        owner = node["name"].split(".", 1)[0]
        size = sum(tensors[key].nbytes for key in node["params"].values())
        node_bytes[owner] = node_bytes.get(owner, 0) + size
    return ExportedSize(file_bytes, node_bytes, sum(a.nbytes for a in tensors.values()))


__all__ = ["ExportedSize", "exported_size"]
