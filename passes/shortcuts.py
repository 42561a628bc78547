"""Bi-Real shortcuts: one real-valued shortcut around each binary convolution.

Bi-Real Net (Liu et al. 2018) and ReActNet's block (``RSign -> BinaryConv -> BN ->
(+ shortcut) -> RPReLU``, Liu et al. 2020) carry the real-valued input of every binary conv
past it, so the information the sign throws away survives (docs/OPERATORS.md, "Bi-Real
shortcuts", has the forward and backward). For a binary conv with input ``x``:

* the add goes right after the BatchNorm2d that is the conv's only reader (right after the conv
  when no BatchNorm follows), and every former reader of that output reads the sum instead, so
  the activation that followed the BN now follows the add;
* the shortcut is ``x`` itself when the shapes match, or ``AvgPool2d(2)(x)`` when the conv
  halves the resolution (stride 2) and keeps the channel count; any other shape change (more
  channels) gets no shortcut;
* no shortcut from a raw stream into a real-valued reader. The shortcut is left out when
  both hold: ``x`` is not a BatchNorm output (walking back through scale-keeping
  single-input ops: activations, pooling, upsampling, flatten), and the sum would reach a
  float conv or linear, or the model output, through such ops (walks forward end harmlessly
  at binary layers and BatchNorms, which see the sum only up to scale, and at adds and
  concatenations, where it joins a residual stream). Why: the float reader was trained on
  the BN output's scale. Bi-Real's ``x`` is a BN output or an activation of one, of the same
  scale, but a raw residual stream can be many times larger. In a stacked hourglass the
  features before each 1x1 head are ``relu(bn(conv1x1(stream)))``, and the stream's std is
  10x the BN output's. A shortcut there made the converted network's heatmap MSE 194,
  against the float network's 0.02, and reactnet hourglasses stopped learning (examples/pose);
* a conv whose output already goes into an add with ``x`` (or ``AvgPool2d(x)``) is skipped, so
  the pass is idempotent. Residual adds already in the model are kept: in a ResNet BasicBlock
  the second conv's new shortcut carries the first activation's output, and the block's own
  identity still adds the block input.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from operators import BinaryConv2d, BinaryLinear
from passes.base import PassResult, add_module_node, is_add, module_nodes, module_of, tensor_shape
from passes.options import check_flag

_NORM_TYPES = (nn.BatchNorm2d,)
_SCALE_FREE_READERS = (BinaryConv2d, BinaryLinear, nn.BatchNorm1d, nn.BatchNorm2d)
_REAL_READERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_MERGES = (torch.cat, torch.concat)
_NORM_OUTPUTS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class ShortcutOptions:
    """Whether a pipeline adds Bi-Real shortcuts (checked when built).

    Attributes:
        add: run :class:`AddShortcuts`: one real-valued shortcut around every binary conv
            whose shapes allow one.
    """

    add: bool = False

    def __post_init__(self) -> None:
        check_flag("ShortcutOptions", "add", self.add)


@dataclass
class AddShortcuts:
    """Pass: add a Bi-Real shortcut around every binary conv whose shapes allow one."""

    name: str = "shortcuts"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(module_nodes(gm, BinaryConv2d)):
            modified = self._add(gm, node) or modified
        return PassResult(gm, modified)

    def _add(self, gm: fx.GraphModule, conv: fx.Node) -> bool:
        source = conv.args[0]
        out = conv
        if len(conv.users) == 1 and isinstance(module_of(gm, next(iter(conv.users))), _NORM_TYPES):
            out = next(iter(conv.users))
        in_shape, out_shape = tensor_shape(source), tensor_shape(out)
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            return False
        if _has_shortcut(gm, out, source) or (
            not _is_normalized(gm, source) and _reaches_real_reader(gm, out)
        ):
            return False
        pooled = (*in_shape[:2], in_shape[2] // 2, in_shape[3] // 2)
        if in_shape == out_shape:
            shortcut, anchor = source, out
        elif pooled == out_shape:
            owner, _, leaf = str(conv.target).rpartition(".")
            base = f"{owner}.{leaf}_shortcut_pool" if owner else f"{leaf}_shortcut_pool"
            shortcut = add_module_node(gm, base, nn.AvgPool2d(2), (source,), after=out)
            anchor = shortcut
        else:
            return False
        with gm.graph.inserting_after(anchor):
            total = gm.graph.call_function(operator.add, (out, shortcut))
        total.meta = dict(out.meta)
        out.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
        return True


def _has_shortcut(gm: fx.GraphModule, out: fx.Node, source: fx.Node) -> bool:
    """Whether ``out`` already feeds an add whose other operand is ``source`` (maybe pooled)."""
    for user in out.users:
        if not is_add(user):
            continue
        for operand in user.args:
            if operand is source:
                return True
            pool = module_of(gm, operand) if isinstance(operand, fx.Node) else None
            if isinstance(pool, nn.AvgPool2d) and operand.args[0] is source:
                return True
    return False


def _is_merge(node: fx.Node) -> bool:
    """An add or a concatenation: where a value joins a residual stream."""
    return is_add(node) or (node.op == "call_function" and node.target in _MERGES)


def _is_normalized(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a BatchNorm output, maybe through scale-keeping single-input ops."""
    while True:
        module = module_of(gm, node)
        if isinstance(module, _NORM_OUTPUTS):
            return True
        inputs = node.all_input_nodes
        weighted = isinstance(module, _SCALE_FREE_READERS + _REAL_READERS)
        if len(inputs) != 1 or weighted or _is_merge(node) or node.op == "placeholder":
            return False
        node = inputs[0]


def _reaches_real_reader(gm: fx.GraphModule, out: fx.Node) -> bool:
    """Whether a value added after ``out`` would reach a real-valued conv/linear or the model
    output through scale-keeping single-input ops (the module docstring's rule)."""
    seen: set[fx.Node] = set()
    stack = list(out.users)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "output":
            return True
        if _is_merge(node):
            continue
        module = module_of(gm, node)
        if isinstance(module, _SCALE_FREE_READERS):
            continue
        if isinstance(module, _REAL_READERS):
            return True
        stack.extend(node.users)
    return False
