"""Channel splits (ShuffleNet-V2's ``x1, x2 = x.chunk(2, dim=1)``), a part of
``passes.export.lower``'s :class:`~passes.export.lower.Lowerer` (which inherits
:class:`ChannelSplitLowering`).

``x.chunk(k, dim=1)``, ``torch.chunk(x, k, 1)``, ``x.split(s, dim=1)`` and
``torch.split(x, s, 1)`` make a tuple of tensors, while every node of the runtime has one
output. The export keeps the tuple as :class:`ChannelPieces`: the value that was split and the
channel range ``[start, stop)`` of each piece, read from shape propagation, so each piece has
exactly torch's size (``chunk(k)``: ``ceil(C / k)`` channels a piece, the last one smaller,
maybe fewer than k pieces; ``split(s)``: ``s`` a piece, the last one smaller;
``split([s0, s1, ...])``: those sizes). Each ``getitem`` of the tuple (``x1, x2 = ...``, or
``pieces[i]``) becomes one ``channel_slice`` op, so a piece the graph never reads costs nothing.

The slice ``x[:, a:b]`` (also ``x[:, a:b, :, :]`` and ``x[:, a:b, ...]``) takes channels
``range(C)[a:b]``: a ``channel_slice`` with Python's rules for negative and clipped bounds, step 1.

A piece or slice that is the whole tensor is that tensor (no op). On [N, F] values the same
spellings split the features. Any other indexing (the batch or a spatial axis, a step, an
integer index that drops the axis, ``None``) is a ``ConversionError`` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx

SPLIT_HELP = (
    "The runtime splits tensors along channels only: x.chunk(k, dim=1), torch.chunk(x, k, 1), "
    "x.split(s, dim=1), torch.split(x, s, 1) (s a size or a list of sizes) with each piece taken "
    "by index (x1, x2 = x.chunk(2, dim=1)), or the slice x[:, a:b] (step 1)."
)


@dataclass(frozen=True)
class ChannelPieces:
    """The FX node is the tuple of a channel split of the runtime value ``name``: piece ``i``
    is channels ``bounds[i] = (start, stop)``."""

    name: str
    bounds: tuple[tuple[int, int], ...]


class ChannelSplitLowering:
    """The Lowerer's handlers of channel splits (a mixin: it uses the Lowerer's ``env``,
    ``emit``, ``value``, ``fail``, ``arguments`` ...)."""

    env: dict[fx.Node, Any]
    channels_last_nodes: set[fx.Node]

    # ---------------------------------------------------------------- spellings handlers
    def lower_chunk(self, node: fx.Node, target: Any) -> None:
        """``x.chunk(k, dim=1)`` / ``torch.chunk(x, k, 1)``."""
        a = self.arguments(node, (("chunks", None), ("dim", 0)))
        if not isinstance(a["chunks"], int) or a["chunks"] < 1:
            raise self.fail(node, f"chunk into {a['chunks']!r} pieces", SPLIT_HELP)
        self._split(node, a["dim"])

    def lower_split(self, node: fx.Node, target: Any) -> None:
        """``x.split(s, dim=1)`` / ``torch.split(x, s, 1)``, ``s`` a size or a list of sizes."""
        if node.op == "call_method":
            a = self.arguments(node, (("split_size", None), ("dim", 0)))
        else:
            a = self.arguments(node, (("split_size_or_sections", None), ("dim", 0)), "tensor")
        self._split(node, a["dim"])

    def lower_channel_index(self, node: fx.Node, source: Any) -> None:
        """``pieces[i]`` of a channel split, or ``x[:, a:b]`` of a tensor (``source`` is the
        indexed node's state: :class:`ChannelPieces` or a value name)."""
        self._refuse_channels_last(node)
        index = self.resolve(node, node.args[1])
        if isinstance(source, ChannelPieces):
            if not isinstance(index, int) or not -len(source.bounds) <= index < len(source.bounds):
                raise self.fail(
                    node,
                    f"index {index!r} into a channel split of {len(source.bounds)} pieces",
                    SPLIT_HELP,
                )
            start, stop = source.bounds[index]
            self._slice(node, source.name, start, stop)
            return
        x = self.value(node, node.args[0])
        span = _channel_span(index)
        if span is None:
            raise self.fail(node, f"indexing a tensor with [{_show(index)}]", SPLIT_HELP)
        start, stop, _ = span.indices(self.shape(x)[0])
        self._slice(node, x, start, stop)

    # ---------------------------------------------------------------- helpers
    def resolve(self, node: fx.Node, value: Any) -> Any:
        """``value`` with the graph's Python numbers (sizes, ``c // 2``) put in for their nodes,
        inside tuples, lists and slices too; a tensor there is an error."""
        if isinstance(value, fx.Node):
            known = self.env.get(value)
            if isinstance(known, int | float | list | tuple) and not isinstance(known, bool):
                return known
            raise self.fail(node, f"it indexes with the tensor {value.name}", SPLIT_HELP)
        if isinstance(value, tuple | list):
            return type(value)(self.resolve(node, v) for v in value)
        if isinstance(value, slice):
            return slice(*(self.resolve(node, v) for v in (value.start, value.stop, value.step)))
        return value

    def _refuse_channels_last(self, node: fx.Node) -> None:
        if node in self.channels_last_nodes:  # lowered on the NCHW value of a permuted view
            raise self.fail(
                node,
                "it splits a channels-last (permuted) tensor",
                "Split before x.permute(0, 2, 3, 1) or after x.permute(0, 3, 1, 2). " + SPLIT_HELP,
            )

    def _split(self, node: fx.Node, dim: Any) -> None:
        self._refuse_channels_last(node)
        x = self.value(node, node.args[0])
        rank = len(self.shape(x)) + 1
        if not isinstance(dim, int) or dim % rank != 1:
            raise self.fail(node, f"a split along dim {dim!r}", SPLIT_HELP)
        metas = node.meta.get("tensor_meta")
        if not isinstance(metas, tuple | list) or not all(hasattr(m, "shape") for m in metas):
            raise self.fail(node, "shape propagation saw no tuple of tensors", SPLIT_HELP)
        bounds, start = [], 0
        for meta in metas:  # torch's own piece sizes
            bounds.append((start, start + int(meta.shape[1])))
            start += int(meta.shape[1])
        self.env[node] = ChannelPieces(x, tuple(bounds))

    def _slice(self, node: fx.Node, x: str, start: int, stop: int) -> None:
        channels = self.shape(x)[0]
        if start >= stop:
            raise self.fail(
                node, f"an empty channel range [{start}, {stop}) of {channels}", SPLIT_HELP
            )
        if (start, stop) == (0, channels):
            self.bind(node, x)
            return
        out = self.shape_of(node)
        attrs = {"start": start, "stop": stop}
        self.bind(node, self.emit("channel_slice", node.name, [x], out, attrs=attrs))


def _channel_span(index: Any) -> slice | None:
    """The channel slice of an index ``[:, a:b]``, ``[:, a:b, :, :]`` or ``[:, a:b, ...]``;
    None for any other index."""
    if not isinstance(index, tuple) or len(index) < 2:
        return None
    whole = slice(None, None, None)
    batch, channels, *rest = index
    if rest and rest[-1] is Ellipsis:
        rest = rest[:-1]
    if batch != whole or not isinstance(channels, slice) or any(r != whole for r in rest):
        return None
    if channels.step not in (None, 1):
        return None
    if not all(b is None or isinstance(b, int) for b in (channels.start, channels.stop)):
        return None
    return channels


def _show(index: Any) -> str:
    """``index`` as it is written inside the brackets."""
    items = index if isinstance(index, tuple) else (index,)
    shown = []
    for item in items:
        if isinstance(item, slice):
            text = ":".join("" if v is None else str(v) for v in (item.start, item.stop))
            shown.append(text + ("" if item.step is None else f":{item.step}"))
        else:
            shown.append("..." if item is Ellipsis else repr(item))
    return ", ".join(shown)


__all__ = ["SPLIT_HELP", "ChannelPieces", "ChannelSplitLowering"]
