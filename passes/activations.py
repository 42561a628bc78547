"""Swap ReLU-family activations for PReLU / RPReLU / DyPReLU (or drop them), per call site.

Why: a ReLU right before a binarizer destroys the information, since ``sign(relu(x)) = +1``
for every ``x``; a ReLU right after a binary layer clips half of an already coarse
signal. Bulat et al. 2019 use PReLU, ReActNet RPReLU, DyBNN DyPReLU; XNOR-Net and Bi-Real Net
drop the activation.

Which activations (after :mod:`passes.canonicalize`, every spelling is an ``nn.ReLU``,
``nn.ReLU6``, ``nn.LeakyReLU`` or ``nn.Hardtanh`` call site), by ``scope``:

* ``"inputs"``: those that feed a binary layer (through pooling, adds, reshapes..., with no
  other weight layer in between);
* ``"binary"`` (default): those that feed a binary layer, or are fed by one likewise: the
  activations of the binary part of the network. ResNet's stem ReLU (it feeds layer1's binary
  convs) is swapped; MobileNet's first ReLU (float stem -> float depthwise) is kept;
* ``"all"``: every one of them.

The replacement for an activation on ``C`` channels (from the recorded shapes, dim 1) is
``operators.PReLU(C, init)`` (torch's PReLU with a faster backward), ``RPReLU(C, init)``
or ``DyPReLU(C, init=init)``, its own module per call site. With ``init = 0`` each of them
equals ReLU at the start (DyPReLU's last FC starts at zero), which is what the conversion's
exactness test relies on. ReLU6 and Hardtanh clip at the top too, so no PReLU-family init
reproduces them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from operators import BinaryConv2d, BinaryLinear, DyPReLU, PReLU, RPReLU
from operators.errors import ConversionError
from passes.base import PassResult, consumers, module_of, producers, tensor_shape, walk
from passes.canonicalize import ACTIVATION_TYPES
from passes.options import check_choice, check_constructor_options, check_number
from passes.select import is_weight_node

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "prelu": PReLU,
    "rprelu": RPReLU,
    "dyprelu": DyPReLU,
    "identity": None,
}
"""Replacement activations by name, each built as ``cls(channels, init=init, **options)``;
``"identity"`` removes the activation."""

SCOPES = ("inputs", "binary", "all")


@dataclass(frozen=True)
class ActivationOptions:
    """Which activations the ``activations`` pass replaces, and with what (checked when built).

    Attributes:
        kind: ``"prelu"``, ``"rprelu"``, ``"dyprelu"``, ``"identity"`` (drop them) or None
            (keep the model's own: the pass is not run).
        init: initial negative slope of the replacement (PReLU weight / ``beta``; 0 makes it
            ReLU at the start).
        scope: ``"inputs"``, ``"binary"`` or ``"all"`` (see the module docstring).
        options: extra keyword arguments of the replacement's constructor (e.g.
            ``{"reduction": 8}`` for DyPReLU).
    """

    kind: str | None = "prelu"
    init: float = 0.25
    scope: str = "binary"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("ActivationOptions", "kind", self.kind, [*sorted(ACTIVATIONS), None])
        check_number("ActivationOptions", "init", self.init)
        check_choice("ActivationOptions", "scope", self.scope, SCOPES)
        factory = ACTIVATIONS.get(self.kind) if self.kind is not None else None
        options = check_constructor_options(
            "ActivationOptions", "options", self.options, str(self.kind), factory, ("init",)
        )
        object.__setattr__(self, "options", options)


@dataclass
class SwapActivations:
    """Pass: replace the in-scope activations as ``options`` say (see the module docstring).

    Raises:
        ConversionError: ``options.kind`` is None (that keeps the model's activations: leave
            the pass out of the pipeline instead).
    """

    options: ActivationOptions = field(default_factory=ActivationOptions)
    name: str = "activations"

    def __post_init__(self) -> None:
        if self.options.kind is None:
            raise ConversionError(
                "SwapActivations needs an activation kind; ActivationOptions.kind=None keeps the "
                "model's activations. What to do: leave this pass out of the pipeline."
            )

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            module = module_of(gm, node)
            if module is None or type(module) not in ACTIVATION_TYPES:
                continue
            if not self.in_scope(gm, node):
                continue
            self._replace(gm, node, module)
            modified = True
        return PassResult(gm, modified)

    def in_scope(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        """Whether the activation at ``node`` is one this pass swaps."""
        scope = self.options.scope
        if scope == "all":
            return True
        stop = lambda other: is_weight_node(gm, other)  # noqa: E731
        binary = lambda found: any(_is_binary(gm, other) for other in found)  # noqa: E731
        if binary(walk(node, consumers, stop)):
            return True
        return scope == "binary" and binary(walk(node, producers, stop))

    def _replace(self, gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
        options = self.options
        factory = ACTIVATIONS[str(options.kind)]
        if factory is None:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            return
        shape = tensor_shape(node)
        if shape is None or len(shape) not in (2, 4):
            raise ConversionError(
                f"activation {node.target!r} has output shape {shape}; {options.kind} needs "
                "a recorded [N, C] or [N, C, H, W] shape to size its per-channel parameters. "
                "What to do: run the 'canonicalize' pass (it records shapes) before this one; "
                "for other ranks keep the model's activations with activation=None."
            )
        weight = next(iter(gm.parameters()), None)
        placement = {} if weight is None else {"device": weight.device, "dtype": weight.dtype}
        try:
            replacement = factory(shape[1], init=options.init, **options.options, **placement)
        except ValueError as error:
            raise ConversionError(
                f"ActivationOptions.options {dict(options.options)}: {options.kind!r} rejects "
                f"them ({error}). What to do: fix that value."
            ) from error
        gm.add_submodule(str(node.target), replacement.train(module.training))


def _is_binary(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(module_of(gm, node), (BinaryConv2d, BinaryLinear))
