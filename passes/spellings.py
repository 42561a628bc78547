"""Every torch spelling the project understands, and what it becomes: one table, read by the
conversion passes (``canonicalize``, ``select``, ``shortcuts``) and by the export
(``passes.export.lower``), in the spirit of torch.ao's BackendConfig.

- :data:`MODULES`, :data:`FUNCTIONS`, :data:`METHODS`: each supported module type, function and
  tensor method, with the runtime op(s) it lowers to and the name of the
  :class:`~passes.export.lower.Lowerer` method that does it. ``convert`` dry-runs the lowering,
  so anything outside this table fails at convert time, not after training.
- :data:`ACTIVATION_FUNCTIONS` / :data:`ACTIVATION_METHODS`: the ReLU-family spellings that
  canonicalization turns into one module per call site (so a per-site PReLU can replace it),
  with how to read their arguments; :data:`INPLACE_FUNCTIONS` / :data:`INPLACE_METHODS`: the
  in-place forms it rewrites out of place first.
- :data:`ADD_FUNCTIONS` / :data:`ADD_METHODS`: the residual additions the shortcut and
  selection passes look for.
- :func:`binary_conv_unsupported`: what the runtime's binary convolution cannot do (the one
  description the layer selection and the export both read).

``supported_table()`` renders the table for the README (a test keeps the README in step).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from operators import BinaryConv2d, BinaryLinear, DyPReLU, RPReLU


@dataclass(frozen=True)
class Rule:
    """Spellings (module types, functions or method names) that lower to ``ops`` through
    ``Lowerer.<handler>``; ``note`` says what is accepted when not everything is."""

    targets: tuple[Any, ...]
    ops: str
    handler: str
    note: str = ""


_ADAPTIVE_NOTE = (
    "any output size (None keeps a dim); to 1x1: global_avgpool; to the input's size: nothing"
)
_UPSAMPLE_NOTE = (
    "'nearest': integer (or integral float) scale_factor or an integer multiple size; "
    "'bilinear', align_corners either: integral scale_factor or any size"
)

# Order matters for modules: binary layers subclass the float ones.
MODULES: tuple[Rule, ...] = (
    Rule(
        (BinaryConv2d,),
        "quantize/dyquantize + bconv2d + affine",
        "binary_layer",
        "groups 1, dilation 1, zero padding",
    ),
    Rule(
        (BinaryLinear,),
        "quantize/dyquantize + bdense + affine",
        "binary_layer",
        "on [N, F] inputs; channels-last (between permutes): quantize + 1x1 bconv2d + affine, "
        "sign binarizers only",
    ),
    Rule((nn.Conv2d,), "conv2d", "float_conv", "zero padding (padding_mode='zeros')"),
    Rule(
        (nn.Linear,),
        "dense",
        "float_linear",
        "on [N, F] inputs; channels-last (between permutes): a 1x1 conv2d",
    ),
    Rule((nn.modules.batchnorm._BatchNorm,), "affine", "batchnorm", "with running statistics"),
    Rule((nn.ReLU,), "relu", "activation"),
    Rule((nn.ReLU6, nn.Hardtanh), "clamp", "activation"),
    Rule((nn.LeakyReLU,), "leaky_relu", "activation"),
    Rule((nn.PReLU,), "prelu", "activation"),
    Rule((RPReLU,), "rprelu", "activation"),
    Rule((DyPReLU,), "dyprelu", "activation"),
    Rule((nn.MaxPool2d,), "maxpool2d", "maxpool_module", "no dilation, no indices"),
    Rule((nn.AvgPool2d,), "avgpool2d", "avgpool_module", "no divisor_override"),
    Rule(
        (nn.AdaptiveAvgPool2d,),
        "adaptive_avgpool2d / global_avgpool",
        "adaptive_avgpool_module",
        _ADAPTIVE_NOTE,
    ),
    Rule((nn.Flatten,), "flatten", "flatten_module", "from dim 1 to the end"),
    Rule(
        (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d),
        "upsample_nearest / upsample_bilinear",
        "upsample_module",
        _UPSAMPLE_NOTE,
    ),
    Rule((nn.Identity, nn.Dropout, nn.Dropout2d), "(nothing)", "passthrough"),
    Rule((nn.SiLU,), "silu", "silu"),
    Rule((nn.Hardswish,), "hardswish", "hardswish"),
    Rule((nn.Hardsigmoid,), "hardsigmoid", "hardsigmoid"),
    Rule((nn.Sigmoid,), "sigmoid", "sigmoid"),
    Rule((nn.GELU,), "gelu", "gelu", "approximate 'none' or 'tanh'"),
    Rule((nn.AdaptiveMaxPool2d,), "adaptive_maxpool2d", "adaptive_maxpool_module", "no indices"),
    Rule(
        (nn.LayerNorm,),
        "layernorm_channels",
        "layernorm",
        "LayerNorm(C) between x.permute(0, 2, 3, 1) and x.permute(0, 3, 1, 2) (ConvNeXt), or "
        "LayerNorm(F) on [N, F]",
    ),
    Rule((nn.ChannelShuffle,), "channel_shuffle", "channel_shuffle_module"),
)

ADD_FUNCTIONS: tuple[Any, ...] = (operator.add, operator.iadd, torch.add)
ADD_METHODS: tuple[str, ...] = ("add", "add_")

_CONSTANT_NOTE = (
    "a per-channel constant (a parameter or buffer read in forward: [C, 1, 1] on NCHW, [C] "
    "channels-last, [F] on [N, F]) becomes an affine"
)
_SPLIT_NOTE = (
    "along channels (dim 1) of [N, C, H, W] or [N, F]; each piece taken by index "
    "(`x1, x2 = ...`) is one channel_slice"
)

FUNCTIONS: tuple[Rule, ...] = (
    Rule(
        (operator.add, torch.add),
        "add (affine for a constant)",
        "add",
        "tensor + tensor of the same shape; tensor + " + _CONSTANT_NOTE,
    ),
    Rule((torch.cat, torch.concat), "concat", "concat", "along channels (dim 1)"),
    Rule((torch.flatten,), "flatten", "flatten_function", "from dim 1 to the end"),
    Rule((F.max_pool2d,), "maxpool2d", "maxpool_function", "no dilation, no indices"),
    Rule((F.avg_pool2d,), "avgpool2d", "avgpool_function", "no divisor_override"),
    Rule(
        (F.adaptive_avg_pool2d,),
        "adaptive_avgpool2d / global_avgpool",
        "adaptive_avgpool_function",
        _ADAPTIVE_NOTE,
    ),
    Rule((torch.mean,), "global_avgpool (+ flatten)", "mean", "over dims (2, 3)"),
    Rule(
        (F.interpolate,),
        "upsample_nearest / upsample_bilinear",
        "interpolate",
        _UPSAMPLE_NOTE,
    ),
    Rule((F.silu,), "silu", "silu"),
    Rule((F.hardswish,), "hardswish", "hardswish"),
    Rule((F.hardsigmoid,), "hardsigmoid", "hardsigmoid"),
    Rule((torch.sigmoid, F.sigmoid), "sigmoid", "sigmoid"),
    Rule((F.gelu,), "gelu", "gelu", "approximate 'none' or 'tanh'"),
    Rule(
        (operator.mul, torch.mul),
        "mul (affine for a constant)",
        "mul",
        "same shapes, or [N, C, H, W] times a gate [N, C, 1, 1] (either order); a constant "
        "number or " + _CONSTANT_NOTE + " with that scale (ConvNeXt's layer scale gamma * y)",
    ),
    Rule((F.adaptive_max_pool2d,), "adaptive_maxpool2d", "adaptive_maxpool_function", "no indices"),
    Rule(
        (torch.channel_shuffle,),
        "channel_shuffle",
        "channel_shuffle_function",
        "F.channel_shuffle is the same function",
    ),
    Rule((torch.permute,), "(layout)", "permute", "as `x.permute()`"),
    Rule((torch.transpose,), "(layout)", "transpose", "as `x.transpose()`"),
    Rule((torch.chunk,), "channel_slice", "chunk", _SPLIT_NOTE),
    Rule((torch.split,), "channel_slice", "split", "a size or a list of sizes, " + _SPLIT_NOTE),
    Rule(
        (operator.getitem,),
        "channel_slice",
        "getitem",
        "`x[:, a:b]` (also `x[:, a:b, ...]`), step 1; a piece of a chunk / split",
    ),
    Rule(
        (F.layer_norm,),
        "layernorm_channels",
        "layer_norm_function",
        "as nn.LayerNorm, weight and bias None or constants (torchvision's LayerNorm2d)",
    ),
)

METHODS: tuple[Rule, ...] = (
    Rule(("add",), "add (affine for a constant)", "add", "as `x + y`; add_ too"),
    Rule(
        ("view", "reshape", "flatten"),
        "flatten",
        "reshape_method",
        "to [N, F]; a rank-5 view only as the start of the channel shuffle (`x.transpose()`)",
    ),
    Rule(("mean",), "global_avgpool (+ flatten)", "mean", "over dims (2, 3)"),
    Rule(("contiguous",), "(nothing)", "passthrough"),
    Rule(("size",), "(shape arithmetic)", "size", "sizes and `+ - // / % **` on them"),
    Rule(("sigmoid",), "sigmoid", "sigmoid"),
    Rule(("mul",), "mul (affine for a constant)", "mul", "as `x * y`; mul_ too"),
    Rule(("chunk",), "channel_slice", "chunk", _SPLIT_NOTE),
    Rule(("split",), "channel_slice", "split", "as `torch.split`"),
    Rule(
        ("permute",),
        "(layout)",
        "permute",
        "(0, 2, 3, 1) -> nn.LayerNorm(C) / F.layer_norm / nn.Linear / elementwise ops / "
        "per-channel constants -> (0, 3, 1, 2) (ConvNeXt); (0, 2, 1, 3, 4) in the channel shuffle",
    ),
    Rule(
        ("transpose",),
        "channel_shuffle (pattern)",
        "transpose",
        "`x.view(n, g, c // g, h, w)` -> `transpose(1, 2)` -> `.contiguous()` -> "
        "`.view(n, -1, h, w)` is one channel_shuffle (ShuffleNet)",
    ),
)


# ---------------------------------------------------------------- canonicalization's forms
@dataclass(frozen=True)
class ActivationForm:
    """How to read one ReLU-family spelling: its parameters after the input, with defaults,
    and the module it equals (``make(**params)``; None when it has no module form)."""

    params: tuple[tuple[str, Any], ...]
    make: Callable[..., nn.Module | None]
    always_inplace: bool = False


def clamp_module(low: float | None, high: float | None) -> nn.Module | None:
    """The activation module equal to ``clamp(x, low, high)``, or None when there is none.

    ``clamp(x, 0)`` is ReLU, ``clamp(x, 0, 6)`` is ReLU6, any other two constant bounds are
    Hardtanh(low, high); a one-sided clamp at a non-zero bound stays as it is.
    """
    if low == 0 and high is None:
        return nn.ReLU()
    if low == 0 and high == 6:
        return nn.ReLU6()
    if low is not None and high is not None:
        return nn.Hardtanh(float(low), float(high))
    return None


_RELU = ActivationForm((("inplace", False),), lambda inplace: nn.ReLU())
_RELU_PLAIN = ActivationForm((), lambda: nn.ReLU())
_RELU_ = ActivationForm((), lambda: nn.ReLU(), always_inplace=True)
_RELU6 = ActivationForm((("inplace", False),), lambda inplace: nn.ReLU6())
_HARDTANH = ActivationForm(
    (("min_val", -1.0), ("max_val", 1.0), ("inplace", False)),
    lambda min_val, max_val, inplace: clamp_module(min_val, max_val),
)
_HARDTANH_ = ActivationForm(
    (("min_val", -1.0), ("max_val", 1.0)),
    lambda min_val, max_val: clamp_module(min_val, max_val),
    always_inplace=True,
)
_LEAKY = ActivationForm(
    (("negative_slope", 0.01), ("inplace", False)),
    lambda negative_slope, inplace: nn.LeakyReLU(float(negative_slope)),
)
_LEAKY_ = ActivationForm(
    (("negative_slope", 0.01),),
    lambda negative_slope: nn.LeakyReLU(float(negative_slope)),
    always_inplace=True,
)
_CLAMP = ActivationForm((("min", None), ("max", None)), lambda min, max: clamp_module(min, max))
_CLAMP_ = ActivationForm(
    (("min", None), ("max", None)), lambda min, max: clamp_module(min, max), always_inplace=True
)

#: Activation module types that canonical graphs use (matched by exact type).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)

ACTIVATION_FUNCTIONS: dict[Any, ActivationForm] = {
    F.relu: _RELU,
    torch.relu: _RELU_PLAIN,
    torch.relu_: _RELU_,
    F.relu_: _RELU_,
    F.relu6: _RELU6,
    F.hardtanh: _HARDTANH,
    F.hardtanh_: _HARDTANH_,
    F.leaky_relu: _LEAKY,
    F.leaky_relu_: _LEAKY_,
    torch.clamp: _CLAMP,
    torch.clip: _CLAMP,
    torch.clamp_: _CLAMP_,
    torch.clip_: _CLAMP_,
}
ACTIVATION_METHODS: dict[str, ActivationForm] = {
    "relu": _RELU_PLAIN,
    "relu_": _RELU_,
    "clamp": _CLAMP,
    "clip": _CLAMP,
    "clamp_": _CLAMP_,
    "clip_": _CLAMP_,
}

INPLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}
INPLACE_METHODS = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div"}


# ---------------------------------------------------------------- binary capability
def binary_conv_unsupported(module: nn.Module) -> str | None:
    """Why the runtime's binary convolution (``bconv2d``) cannot run ``module``, or None.

    ``bconv2d`` computes groups-1, dilation-1 convolutions with zero padding by integer
    amounts; a Linear is always fine (``bdense``).
    """
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups} (binary convolutions support groups=1 only)"
        if tuple(module.dilation) != (1, 1):
            return f"dilation={module.dilation} (binary convolutions support dilation 1 only)"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (binary convolutions pad with zeros)"
        if not isinstance(module.padding, tuple | list):
            return f"padding={module.padding!r} (binary convolutions take integer padding)"
    return None


# ---------------------------------------------------------------- lookup and listing
def module_rule(module: nn.Module) -> Rule | None:
    """The rule for a module instance (first matching type in :data:`MODULES`)."""
    for rule in MODULES:
        if isinstance(module, rule.targets):
            return rule
    return None


def function_rule(target: Any) -> Rule | None:
    return next((rule for rule in FUNCTIONS if any(target is t for t in rule.targets)), None)


def method_rule(name: str) -> Rule | None:
    return next((rule for rule in METHODS if name in rule.targets), None)


def _spelling(target: Any, kind: str) -> str:
    if kind == "method":
        return f"`x.{target}()`"
    if kind == "module" and target is nn.modules.batchnorm._BatchNorm:
        return "`nn.BatchNorm1d/2d/3d`, `nn.SyncBatchNorm`"
    if kind == "module":
        return (
            f"`nn.{target.__name__}`"
            if target.__module__.startswith("torch")
            else (f"`operators.{target.__name__}`")
        )
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if target is operator.add:
        return "`x + y`"
    if target is operator.mul:
        return "`x * y`"
    if target is operator.getitem:
        return "`x[...]`"
    if module == "torch.functional":  # torch.split is written in Python
        return f"`torch.{name}`"
    prefix = (
        "F" if "functional" in module or target in (F.max_pool2d, F.avg_pool2d, F.gelu) else "torch"
    )
    return f"`{prefix}.{name}`"


def supported_table() -> str:
    """Markdown: every supported spelling, what it becomes in the runtime, and its limits."""
    rows = ["| spelling | runtime op | accepted |", "|---|---|---|"]
    for kind, rules in (("module", MODULES), ("function", FUNCTIONS), ("method", METHODS)):
        for rule in rules:
            names = ", ".join(_spelling(t, kind) for t in rule.targets)
            rows.append(f"| {names} | {rule.ops} | {rule.note} |")
    activations = ", ".join(
        sorted({_spelling(t, "function") for t in ACTIVATION_FUNCTIONS})
        + [f"`x.{name}()`" for name in ACTIVATION_METHODS]
    )
    rows.append(
        f"| {activations} | relu / clamp / leaky_relu | constant bounds; made one module per "
        "call site by canonicalization |"
    )
    rows.append(
        "| `self.<parameter or buffer>` in forward (FX get_attr) | (constant) | as a per-channel "
        "factor or term of `x * y` / `x + y` (an affine), as F.layer_norm's weight / bias, or "
        "computed from constants alone (`gamma.view(-1, 1, 1)`, evaluated at export) |"
    )
    return "\n".join(rows)
