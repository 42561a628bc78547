"""Selection: decide which convolutions and linear layers become binary.

Every ``nn.Conv2d`` / ``nn.Linear`` call site gets a :class:`Decision` in
``node.meta["binarize.select"]``; :mod:`passes.binarize_layers` acts on it. The decision is
layered like torch.ao's ``QConfigMapping``, each level overriding the one before:

1. global: binarize (``LayerSelection.default``);
2. structure: keep float the first layers (reading a graph input with no weight layer in
   between), the last layers (writing a graph output likewise) and 1x1 projection shortcuts
   (a 1x1 conv reading a fork point, through pooling, whose output, through BatchNorm, is an
   operand of an add), which Bi-Real, ReActNet and Bulat 2019 keep real; the two layers of
   every squeeze-excitation branch (:func:`squeeze_excitation_layers`), a few per-sample MACs
   on a pooled vector whose output gates the trunk multiplicatively; and grouped or depthwise
   convs, which have no binary kernel (so does every layer ``unsupported_reason`` rejects,
   e.g. dilated convs, and every ``Linear`` applied channels-last, see
   :func:`layout_unsupported`);
3. type: entries of ``keep_float`` / ``binarize`` that are module types;
4. name regex: string entries that are not module names, matched with ``re.fullmatch``;
5. module name: string entries equal to the layer's qualified name or to an enclosing
   module's (``"layer4"`` covers every layer inside it); the longest such name wins.

At the regex and type levels ``keep_float`` wins over ``binarize`` when different entries match;
the same entry in both lists is an error (:class:`LayerSelection` checks its rules when built).
Asking for a layer that cannot be binarized (another layer kind, groups > 1, dilation > 1,
non-zero padding mode, a channels-last ``Linear``) by type or by exact name raises
:class:`binarize.ConversionError`. So a squeeze-excitation branch becomes binary by naming it
(``binarize=["features.4.block.2"]`` covers both its layers), by a regex or by type, or for
the whole model with ``LayerSelection(keep_squeeze_excitation=False)``.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from operators.errors import ConversionError
from passes.base import (
    PassResult,
    consumers,
    is_add,
    module_of,
    producers,
    tensor_shape,
    walk,
)
from passes.options import check_flag
from passes.spellings import binary_conv_unsupported

META_KEY = "binarize.select"

#: Module types whose binary counterparts exist (matched by exact type).
BINARIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
#: Layer types that hold weights and so delimit "the first/last layers" and the binary region.
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
)
_POOL_TYPES = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity)

# The spellings the squeeze-excitation pattern is made of (after canonicalization, so in-place
# forms are already out of place): the global average pool, the gate and the product, and the
# shape-only steps that may sit between them (flatten before a Linear, view back to
# [N, C, 1, 1] after it, expand_as before the product).
_SE_POOLS = {
    "call_module": (nn.AdaptiveAvgPool2d,),
    "call_function": (F.adaptive_avg_pool2d, torch.mean),
    "call_method": ("mean",),
}
_SE_GATES = {
    "call_module": (nn.Sigmoid, nn.Hardsigmoid),
    "call_function": (torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.special.expit),
    "call_method": ("sigmoid",),
}
_SE_PRODUCTS = {"call_function": (operator.mul, torch.mul), "call_method": ("mul",)}
_SE_RESHAPES = {
    "call_module": (nn.Flatten, nn.Unflatten, nn.Identity),
    "call_function": (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze),
    "call_method": ("view", "reshape", "flatten", "squeeze", "unsqueeze", "expand",
                    "expand_as", "contiguous"),
}  # fmt: skip
#: At most this many single-input steps (activation, BatchNorm, dropout) between the two
#: layers of a squeeze-excitation branch.
_SE_MAX_STEPS = 3

Selector = type | str


@dataclass(frozen=True)
class Decision:
    """Whether one layer becomes binary, and the rule that decided it."""

    binary: bool
    reason: str


@dataclass(frozen=True)
class LayerSelection:
    """Which layers to binarize (see the module docstring for the levels).

    Attributes:
        default: the global level: binarize every supported layer not kept by a later level.
        keep_first: keep the layers that read the graph inputs float.
        keep_last: keep the layers that write the graph outputs float.
        keep_grouped: keep depthwise/grouped and dilated convolutions float.
        keep_projections: keep 1x1 projection shortcuts (downsample convs) float.
        keep_squeeze_excitation: keep the two layers of every squeeze-excitation branch
            float.
        keep_float: types, name regexes or exact names to keep float.
        binarize: types, name regexes or exact names to binarize.
    """

    default: bool = True
    keep_first: bool = True
    keep_last: bool = True
    keep_grouped: bool = True
    keep_projections: bool = True
    keep_squeeze_excitation: bool = True
    keep_float: tuple[Selector, ...] = ()
    binarize: tuple[Selector, ...] = ()

    def __post_init__(self) -> None:
        """Check every rule once; a single name or type becomes a one-entry tuple.

        Raises:
            ConversionError: a flag that is not a bool, an entry that is neither a module
                type nor a string, a string that is not a valid regular expression, or the
                same entry in both ``keep_float`` and ``binarize``.
        """
        flags = ("default", "keep_first", "keep_last", "keep_grouped", "keep_projections",
                 "keep_squeeze_excitation")  # fmt: skip
        for name in flags:
            check_flag("LayerSelection", name, getattr(self, name))
        for name in ("keep_float", "binarize"):
            entries = getattr(self, name)
            if isinstance(entries, (str, type)) or not isinstance(entries, Iterable):
                entries = (entries,)
            entries = tuple(entries)
            for entry in entries:
                _check_selector(name, entry)
            object.__setattr__(self, name, entries)
        both = [entry for entry in self.keep_float if entry in self.binarize]
        if both:
            raise ConversionError(
                f"LayerSelection: {_label(both[0])!r} is listed in both keep_float and binarize. "
                "What to do: list it in one of them."
            )


def _check_selector(name: str, entry: object) -> None:
    if isinstance(entry, type):
        return
    if not isinstance(entry, str):
        raise ConversionError(
            f"LayerSelection.{name} entry {entry!r} is neither a module type nor a string (a "
            "qualified module name or a regular expression over qualified names)."
        )
    try:
        re.compile(entry)
    except re.error as error:
        raise ConversionError(
            f"LayerSelection.{name} entry {entry!r} is not a module name nor a valid regular "
            f"expression ({error}). What to do: check the spelling, or escape it with re.escape."
        ) from error


def _label(entry: Selector) -> str:
    return entry.__name__ if isinstance(entry, type) else entry


def is_weight_node(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` calls a weight layer (conv, linear, ... or any binary layer)."""
    module = module_of(gm, node)
    return module is not None and isinstance(module, WEIGHT_TYPES)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` has no binary counterpart, or None when it can be binarized.

    What the runtime's binary convolution can run is described once, in
    ``passes.spellings.binary_conv_unsupported`` (the export reads the same description).
    """
    if type(module) not in BINARIZABLE_TYPES:
        names = ", ".join(kind.__name__ for kind in BINARIZABLE_TYPES)
        return f"{type(module).__name__} has no binary version (only {names} do)"
    return binary_conv_unsupported(module)


def layout_unsupported(node: fx.Node, module: nn.Module) -> str | None:
    """Why the call ``node`` of ``module`` cannot be binary although the module could be.

    A binary linear layer binarizes an ``[N, F]`` input with one threshold per feature of
    dim 1 (``B(x)_{n,f} = sign(x_{n,f} - beta_f)``) and the runtime's ``bdense`` packs those
    ``F`` features. ``nn.Linear`` on any other rank works on the *last* dim, e.g. ConvNeXt's
    ``x.permute(0, 2, 3, 1)`` then ``Linear`` over the channels of ``[N, H, W, C]``: a binary
    layer would take ``H`` for the feature count (and, when ``H == C``, threshold each row
    with another channel's shift). Such calls stay float. None when the layout is fine or the
    input shape was not recorded.
    """
    if not isinstance(module, nn.Linear) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    shape = tensor_shape(node.args[0])
    if shape is None or len(shape) == 2:
        return None
    dims = ", ".join(["N", *map(str, shape[1:])])
    return (
        f"Linear applied channels-last (input [{dims}], features on the last dim): binary "
        "linear layers take [N, F] inputs only (a 1x1 conv on [N, C, H, W] can be binary)"
    )


@dataclass
class SelectLayers:
    """Pass: annotate each conv/linear call site with a :class:`Decision`."""

    selection: LayerSelection = LayerSelection()
    name: str = "select"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modules = dict(gm.named_modules())
        self._check_names(modules)
        first, last = self._boundary_layers(gm)
        structure = _Structure(first, last, squeeze_excitation_layers(gm))
        used: set[str] = set()
        for node in gm.graph.nodes:
            module = module_of(gm, node)
            if module is not None and isinstance(module, WEIGHT_TYPES):
                node.meta[META_KEY] = self._decide(gm, node, module, structure, modules, used)
        unused = [
            entry
            for entry in (*self.selection.keep_float, *self.selection.binarize)
            if isinstance(entry, str) and entry not in used
        ]
        if unused:
            layers = _weight_layer_names(gm)
            hints = "".join(suggest(entry, layers) for entry in unused)
            raise ConversionError(
                f"keep_float/binarize entries {unused!r} match no conv or linear layer (an "
                "entry is a module name, or else a regular expression matched against whole "
                f"qualified names).{hints} What to do: check the spelling; the conv/linear "
                f"layers are {layers}."
            )
        return PassResult(gm, modified=True)

    def _decide(
        self,
        gm: fx.GraphModule,
        node: fx.Node,
        module: nn.Module,
        structure: _Structure,
        modules: Mapping[str, nn.Module],
        used: set[str],
    ) -> Decision:
        """The most specific level that says something about this layer decides."""
        target = str(node.target)
        unsupported = unsupported_reason(module) or layout_unsupported(node, module)
        decision = (
            self._by_name(target, unsupported, modules, used)
            or self._by_regex(target, unsupported, modules, used)
            or self._by_type(target, module, unsupported)
        )
        if decision is not None:
            return decision
        sel = self.selection
        if unsupported:
            return Decision(False, unsupported)
        if sel.keep_first and node in structure.first:
            return Decision(False, "first layer (reads a graph input)")
        if sel.keep_last and node in structure.last:
            return Decision(False, "last layer (writes a graph output)")
        if sel.keep_grouped and isinstance(module, nn.Conv2d) and module.groups != 1:
            return Decision(False, "grouped/depthwise convolution")
        if sel.keep_squeeze_excitation and node in structure.squeeze_excitation:
            return Decision(False, "squeeze-excitation branch")
        if sel.keep_projections and _is_projection_shortcut(gm, node, module):
            return Decision(False, "1x1 projection shortcut")
        return Decision(sel.default, "global default")

    def _entries(self) -> list[tuple[Selector, bool]]:
        return [(e, False) for e in self.selection.keep_float] + [
            (e, True) for e in self.selection.binarize
        ]

    def _by_name(
        self, target: str, unsupported: str | None, modules: Mapping[str, nn.Module], used: set[str]
    ) -> Decision | None:
        """The longest module name that is ``target`` or encloses it (``"layer4"``)."""
        matches = [
            (entry, binary)
            for entry, binary in self._entries()
            if isinstance(entry, str)
            and entry in modules
            and (entry == target or target.startswith(f"{entry}."))
        ]
        if not matches:
            return None
        used.update(str(entry) for entry, _ in matches)
        # The longest name is unique: two names enclosing `target` with the same length are
        # the same name, and LayerSelection rejects a name listed in both lists.
        entry, binary = max(matches, key=lambda match: len(str(match[0])))
        if binary and unsupported:
            if entry == target:
                raise _cannot_binarize(target, unsupported, "its exact name")
            return Decision(False, unsupported)
        return Decision(binary, f"name {entry!r} in {'binarize' if binary else 'keep_float'}")

    def _by_regex(
        self, target: str, unsupported: str | None, modules: Mapping[str, nn.Module], used: set[str]
    ) -> Decision | None:
        """The first matching pattern, ``keep_float`` before ``binarize``."""
        for entry, binary in self._entries():
            if isinstance(entry, str) and entry not in modules and re.fullmatch(entry, target):
                used.add(entry)
                if not (binary and unsupported):
                    kind = "binarize" if binary else "keep_float"
                    return Decision(binary, f"name matches {entry!r} in {kind}")
        return None

    def _by_type(self, target: str, module: nn.Module, unsupported: str | None) -> Decision | None:
        """An entry that is exactly this layer's type, ``keep_float`` before ``binarize``."""
        for entry, binary in self._entries():
            if isinstance(entry, type) and type(module) is entry:
                if binary and unsupported:
                    raise _cannot_binarize(target, unsupported, f"type {entry.__name__}")
                kind = "binarize" if binary else "keep_float"
                return Decision(binary, f"type {entry.__name__} in {kind}")
        return None

    def _check_names(self, modules: Mapping[str, nn.Module]) -> None:
        """A module named in ``binarize`` must be, or contain, a conv or linear layer."""
        for entry in self.selection.binarize:
            module = modules.get(entry) if isinstance(entry, str) else None
            if module is not None and not any(
                isinstance(inner, WEIGHT_TYPES) for inner in module.modules()
            ):
                reason = unsupported_reason(module) or "it holds no conv or linear layer"
                raise _cannot_binarize(entry, reason, "its exact name")

    def _boundary_layers(self, gm: fx.GraphModule) -> tuple[set[fx.Node], set[fx.Node]]:
        """Weight layers reachable from an input / reaching an output with none in between."""
        stop = lambda node: is_weight_node(gm, node)  # noqa: E731
        first: set[fx.Node] = set()
        last: set[fx.Node] = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                first.update(walk(node, consumers, stop))
            elif node.op == "output":
                last.update(walk(node, producers, stop))
        return first, last


@dataclass(frozen=True)
class _Structure:
    """The weight-layer nodes each structural rule applies to, found once per graph."""

    first: set[fx.Node]
    last: set[fx.Node]
    squeeze_excitation: set[fx.Node]


def squeeze_excitation_layers(gm: fx.GraphModule) -> set[fx.Node]:
    """The two weight layers of every squeeze-excitation branch of ``gm`` (Hu et al. 2018).

    The branch computes ``x * gate(expand(act(reduce(pool(x)))))``: ``pool`` a global
    average pool of the trunk ``x`` to ``[N, C, 1, 1]`` or ``[N, C]``; ``reduce`` and
    ``expand`` 1x1 convs or ``Linear`` layers (``C -> C/r -> C``); ``act`` one to three
    single-input steps (ReLU, SiLU, Hardswish, BatchNorm...); ``gate`` a sigmoid or hard
    sigmoid; the product with the same trunk ``x`` it pooled. Shape-only steps (flatten,
    view, reshape, expand_as) may sit around the pool, the layers and the gate. Matched on the
    graph's structure, so MobileNetV3's, EfficientNet's and timm's spellings all match.
    """
    found: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if not _matches(gm, node, _SE_PRODUCTS) or len(node.args) != 2:
            continue
        left, right = node.args
        if not (isinstance(left, fx.Node) and isinstance(right, fx.Node)):
            continue
        for gate_side, trunk in ((left, right), (right, left)):
            found.update(_squeeze_excitation_branch(gm, gate_side, trunk))
    return found


def _squeeze_excitation_branch(
    gm: fx.GraphModule, value: fx.Node, trunk: fx.Node
) -> tuple[fx.Node, ...]:
    """``(reduce, expand)`` when ``value`` is the gate of a branch that pooled ``trunk``."""
    gate = _through_reshapes(gm, value)
    if not _matches(gm, gate, _SE_GATES):
        return ()
    expand = _through_reshapes(gm, _first_input(gate))
    if expand is None or not _is_pointwise_layer(gm, expand):
        return ()
    reduce, steps = _first_input(expand), 0
    while steps < _SE_MAX_STEPS and _is_unary(reduce) and not _is_pointwise_layer(gm, reduce):
        reduce, steps = _first_input(reduce), steps + 1
    if steps == 0 or reduce is None or not _is_pointwise_layer(gm, reduce):
        return ()
    pool = _through_reshapes(gm, _first_input(reduce))
    if not _is_global_pool(gm, pool):
        return ()
    pooled = _through_reshapes(gm, _first_input(pool))
    if pooled is None or pooled is not _through_reshapes(gm, trunk):
        return ()
    return (reduce, expand)


def _first_input(node: fx.Node | None) -> fx.Node | None:
    """The node ``node`` reads first, or None when it reads no node first."""
    source = node.args[0] if node is not None and node.args else None
    return source if isinstance(source, fx.Node) else None


def _matches(
    gm: fx.GraphModule, node: fx.Node | None, table: Mapping[str, tuple[Any, ...]]
) -> bool:
    """Whether ``node`` calls one of ``table``'s modules (by type), functions or methods."""
    if node is None or node.op not in table:
        return False
    if node.op == "call_module":
        return isinstance(module_of(gm, node), table["call_module"])
    return node.target in table[node.op]


def _through_reshapes(gm: fx.GraphModule, node: fx.Node | None) -> fx.Node | None:
    """The value ``node`` holds before any shape-only steps."""
    while node is not None and _matches(gm, node, _SE_RESHAPES):
        node = _first_input(node)
    return node


def _is_unary(node: fx.Node | None) -> bool:
    """A call on one tensor (further arguments, if any, are constants)."""
    if node is None or node.op not in ("call_module", "call_function", "call_method"):
        return False
    others = [*node.args[1:], *node.kwargs.values()]
    return _first_input(node) is not None and not any(isinstance(a, fx.Node) for a in others)


def _is_pointwise_layer(gm: fx.GraphModule, node: fx.Node | None) -> bool:
    """A 1x1 convolution or a linear layer (the two layers of a squeeze-excitation branch)."""
    module = module_of(gm, node) if node is not None else None
    if isinstance(module, nn.Conv2d):
        return tuple(module.kernel_size) == (1, 1)
    return isinstance(module, nn.Linear)


def _is_global_pool(gm: fx.GraphModule, node: fx.Node | None) -> bool:
    """An average pool of an ``[N, C, H, W]`` tensor to ``[N, C]`` or ``[N, C, 1, 1]``."""
    if node is None or not _matches(gm, node, _SE_POOLS):
        return False
    source = _first_input(node)
    before = tensor_shape(source) if source is not None else None
    after = tensor_shape(node)
    if before is None or after is None or len(before) != 4:
        return False
    return len(after) == 2 or (len(after) == 4 and after[2:] == (1, 1))


def _cannot_binarize(target: str, reason: str, how: str) -> ConversionError:
    return ConversionError(
        f"cannot binarize layer {target!r} (selected by {how}): {reason}. What to do: remove it "
        "from binarize=[...] (it then stays float), or replace it in the model with a supported "
        "layer."
    )


def _weight_layer_names(gm: fx.GraphModule) -> list[str]:
    return [str(node.target) for node in gm.graph.nodes if is_weight_node(gm, node)]


def _is_projection_shortcut(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> bool:
    """A 1x1 conv reading a fork point (through pooling) whose output feeds an add (through BN).

    The fork test tells ResNet's downsample (reads the block input, which the main branch also
    reads) from the bottleneck's last 1x1 conv (reads the branch, feeds the same add).
    """
    if not isinstance(module, nn.Conv2d) or tuple(module.kernel_size) != (1, 1):
        return False
    source = node.args[0]
    while isinstance(source, fx.Node) and isinstance(module_of(gm, source), _POOL_TYPES):
        if len(source.users) > 1:
            break
        source = source.args[0]
    if not isinstance(source, fx.Node) or len(source.users) < 2:
        return False
    out = node
    while len(out.users) == 1:
        (user,) = out.users
        if is_add(user):
            return True
        if not isinstance(module_of(gm, user), _NORM_TYPES):
            return False
        out = user
    return False


def suggest(name: str, names: Iterable[str]) -> str:
    """A "did you mean" hint for a misspelt layer name ("" when nothing is close)."""
    close = difflib.get_close_matches(name, list(names), n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""
