"""Replace the selected ``nn.Conv2d`` / ``nn.Linear`` with ``BinaryConv2d`` / ``BinaryLinear``.

Acts on the decisions :class:`passes.select.SelectLayers` left in ``node.meta``. Each binary
layer is built with ``from_float`` (same hyper-parameters, weight and bias) and carries its own
activation binarizer (built for its input channels) and weight-scale mode, so every layer
computes ``conv(B(x), alpha_o * sign(W)) + bias`` (XNOR-Net; docs/OPERATORS.md, "Weight
binarization and the binary layers").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from operators import BINARIZERS, WEIGHT_SCALES, BinaryConv2d, BinaryLinear, make_binarizer
from operators.errors import ConversionError
from passes.base import PassResult, module_of
from passes.options import check_choice, check_constructor_options
from passes.select import META_KEY, Decision

_BINARY_OF: dict[type[nn.Module], type[BinaryConv2d] | type[BinaryLinear]] = {
    nn.Conv2d: BinaryConv2d,
    nn.Linear: BinaryLinear,
}


@dataclass(frozen=True)
class BinarizerOptions:
    """How every binary layer binarizes its input and its weights (checked when built).

    Attributes:
        kind: the activation binarizer (a key of ``operators.BINARIZERS``: ``"ste"``,
            ``"approx"``, ``"progressive"``, ``"rsign"``, ``"dysign"``), built per layer for
            its input channels.
        weight_scale: ``"detached"``, ``"attached"``, ``"learnable"`` or ``"none"`` (see
            ``operators.BinaryConv2d``).
        options: extra keyword arguments of the binarizer's constructor (e.g.
            ``{"reduction": 8}`` for DySign, ``{"backward": "ste"}`` for RSign).
    """

    kind: str = "approx"
    weight_scale: str = "detached"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("BinarizerOptions", "kind", self.kind, sorted(BINARIZERS))
        check_choice("BinarizerOptions", "weight_scale", self.weight_scale, WEIGHT_SCALES)
        options = check_constructor_options(
            "BinarizerOptions", "options", self.options, self.kind, BINARIZERS[self.kind], ()
        )
        object.__setattr__(self, "options", options)


@dataclass
class BinarizeLayers:
    """Pass: swap every layer selected as binary for its binary counterpart, binarized as
    ``options`` say."""

    options: BinarizerOptions = field(default_factory=BinarizerOptions)
    name: str = "binarize_layers"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in gm.graph.nodes:
            module = module_of(gm, node)
            if module is None or type(module) not in _BINARY_OF:
                continue
            decision: Decision | None = node.meta.get(META_KEY)
            if decision is None:
                raise ConversionError(
                    f"layer {node.target!r} has no selection decision: the 'select' pass must "
                    "run before 'binarize_layers' (check the recipe's passes)."
                )
            if decision.binary:
                gm.add_submodule(str(node.target), self.binary_layer(module))
                modified = True
        return PassResult(gm, modified)

    def binary_layer(self, layer: nn.Module) -> BinaryConv2d | BinaryLinear:
        """The binary counterpart of ``layer`` with this pass's binarizer and weight scale."""
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        options = self.options
        try:
            binarizer = make_binarizer(options.kind, channels, **options.options)
        except ValueError as error:
            raise ConversionError(
                f"BinarizerOptions.options {dict(options.options)}: the {options.kind!r} "
                f"binarizer rejects them ({error}). What to do: fix that value."
            ) from error
        binary = _BINARY_OF[type(layer)].from_float(
            layer,
            input_binarizer=binarizer.to(device=layer.weight.device, dtype=layer.weight.dtype),
            weight_scale=options.weight_scale,
        )
        return binary.train(layer.training)
