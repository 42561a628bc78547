"""Selection: decide which convolutions and linear layers become binary.

Every ``nn.Conv2d`` / ``nn.Linear`` call site gets a :class:`Decision` in
``node.meta["binarize.select"]``; :mod:`passes.binarize_layers` acts on it. The decision is
layered like torch.ao's ``QConfigMapping``, each level overriding the one before:

1. global: binarize (``LayerSelection.default``);
2. structure: keep float the first layers (reading a graph input with no weight layer in
   between), the last layers (writing a graph output likewise) and 1x1 projection shortcuts
   (a 1x1 conv reading a fork point, through pooling, whose output, through BatchNorm, is an
   operand of an add), which Bi-Real, ReActNet and Bulat 2019 keep real; and grouped or
   depthwise convs, which have no binary kernel (so does every layer ``unsupported_reason``
   rejects, e.g. dilated convs);
3. type: entries of ``keep_float`` / ``binarize`` that are module types;
4. name regex: string entries that are not module names, matched with ``re.fullmatch``;
5. module name: string entries equal to the layer's qualified name or to an enclosing
   module's (``"layer4"`` covers every layer inside it); the longest such name wins.

At the regex and type levels ``keep_float`` wins over ``binarize`` when different entries match;
the same entry in both lists is an error (:class:`LayerSelection` checks its rules when built).
Asking for a layer that cannot be binarized (another layer kind, groups > 1, dilation > 1,
non-zero padding mode) by type or by exact name raises :class:`binarize.ConversionError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import fx, nn

from binarize.errors import ConversionError
from passes.base import PassResult, consumers, is_add, module_of, producers, walk
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
        keep_float: types, name regexes or exact names to keep float.
        binarize: types, name regexes or exact names to binarize.
    """

    default: bool = True
    keep_first: bool = True
    keep_last: bool = True
    keep_grouped: bool = True
    keep_projections: bool = True
    keep_float: tuple[Selector, ...] = ()
    binarize: tuple[Selector, ...] = ()

    def __post_init__(self) -> None:
        """Check every rule once; a single name or type becomes a one-entry tuple.

        Raises:
            ConversionError: a flag that is not a bool, an entry that is neither a module
                type nor a string, a string that is not a valid regular expression, or the
                same entry in both ``keep_float`` and ``binarize``.
        """
        for name in ("default", "keep_first", "keep_last", "keep_grouped", "keep_projections"):
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


@dataclass
class SelectLayers:
    """Pass: annotate each conv/linear call site with a :class:`Decision`."""

    selection: LayerSelection = LayerSelection()
    name: str = "select"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modules = dict(gm.named_modules())
        self._check_names(modules)
        first, last = self._boundary_layers(gm)
        used: set[str] = set()
        for node in gm.graph.nodes:
            module = module_of(gm, node)
            if module is not None and isinstance(module, WEIGHT_TYPES):
                node.meta[META_KEY] = self._decide(gm, node, module, first, last, modules, used)
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
        first: set[fx.Node],
        last: set[fx.Node],
        modules: Mapping[str, nn.Module],
        used: set[str],
    ) -> Decision:
        """The most specific level that says something about this layer decides."""
        target = str(node.target)
        unsupported = unsupported_reason(module)
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
        if sel.keep_first and node in first:
            return Decision(False, "first layer (reads a graph input)")
        if sel.keep_last and node in last:
            return Decision(False, "last layer (writes a graph output)")
        if sel.keep_grouped and isinstance(module, nn.Conv2d) and module.groups != 1:
            return Decision(False, "grouped/depthwise convolution")
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
