"""Freeze a trained binary network into the runtime's safe, bit-packed file.

    packed = binarize.pack(bnn, example_inputs=(x,), path="model.bnn")
    y = runtime.load(packed).predict(x.numpy())

Pipeline: ``passes.lower`` (student graph -> op list: binary layers become
quantize + bconv2d/bdense + affine, BatchNorm becomes affine) -> ``passes.fold`` (merge
affines; fold an affine feeding a binarizer into its integer threshold) -> ``runtime.format``
(safetensors container, graph JSON and format version in its metadata, atomic write).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch import nn

from binarize.errors import ConversionError
from binarize.nn import Binarizer, binary_layers
from runtime.format import write_model

if TYPE_CHECKING:
    from passes.ir import Program


def _student(model: nn.Module) -> fx.GraphModule:
    student = getattr(model, "student", model)
    if not isinstance(student, fx.GraphModule):
        raise ConversionError(
            f"pack needs the network returned by binarize.convert (or its .student GraphModule), "
            f"got {type(model).__name__}. Convert the model first: "
            "bnn = binarize.convert(model, recipe=..., example_inputs=(x,))."
        )
    return student


def _example_tuple(
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        raise ConversionError(
            "pack takes exactly one example input tensor (the runtime model has one input), "
            f"got {len(inputs)} item(s). Pass example_inputs=(x,) with x shaped like a batch."
        )
    x = inputs[0]
    if x.dtype != torch.float32 or x.dim() not in (2, 4):
        raise ConversionError(
            f"the example input must be a float32 [N, C, H, W] or [N, F] tensor, got "
            f"{x.dtype} with shape {tuple(x.shape)}."
        )
    return (x.detach().cpu(),)


def _soft_parts(student: nn.Module) -> list[str]:
    """Names of the parts whose training-time state differs from the exported hard network."""
    soft = []
    for name, mod in student.named_modules():
        if not isinstance(mod, Binarizer):
            continue
        if not mod.enabled:
            soft.append(f"{name} (binarizer disabled)")
        elif mod.backward == "progressive" and float(mod.lam) < float(mod.lam_max):
            soft.append(f"{name} (progressive lambda {float(mod.lam):g} < {mod.lam_max:g})")
    layers = {id(layer) for layer in binary_layers(student)}
    for name, mod in student.named_modules():
        if id(mod) in layers and not mod.binarize_weights:
            soft.append(f"{name} (weights not binarized)")
    return soft


def lower_for_runtime(
    bnn: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]
) -> Program:
    """The folded op list ``pack`` writes (useful to inspect what the runtime will run)."""
    from passes.fold import fold  # passes import binarize.nn: load them on use, not at import
    from passes.lower import lower

    student = _student(bnn)
    inputs = _example_tuple(example_inputs)
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        raise ConversionError(
            f"pack reads weights on the CPU; move the model first (.cpu()), it is on {device}."
        )
    return fold(lower(student, inputs))


def pack(
    bnn: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | PathLike[str] | None = None,
) -> bytes:
    """Freeze ``bnn`` (a :class:`~binarize.convert.BinaryModel`) into the runtime's file format.

    The exported network is the hard one: every binarizer is ``x >= threshold`` (sign(0) = +1)
    and every binary weight is ``sign(W)``, with the scale alpha_o, BatchNorm and biases
    folded into per-channel affines or into the next binarizer's integer threshold. If the
    model is still in a soft training state (a disabled binarizer, a progressive lambda below
    its maximum, float weights in stage 1) a warning names those parts: the runtime's
    output then differs from the model's current eval output until the schedule is finalized
    (``bnn.schedule.finalize(bnn)``).

    Args:
        bnn: the converted network (``binarize.convert``) or its ``.student``.
        example_inputs: one batch-shaped float32 tensor; fixes the input's channel and spatial
            size (the batch size stays free).
        path: when given, the file is also written there atomically.

    Returns:
        The packed file's bytes.

    Raises:
        ConversionError: a node the runtime cannot run (named), or bad example inputs.
    """
    student = _student(bnn)
    soft = _soft_parts(student)
    if soft:
        shown = ", ".join(soft[:5]) + (f" and {len(soft) - 5} more" if len(soft) > 5 else "")
        warnings.warn(
            f"pack exports the hard binary network, but these parts are in a soft training "
            f"state: {shown}. Finalize the schedule (bnn.schedule.finalize(bnn)) to make the "
            "PyTorch model match the packed one.",
            stacklevel=2,
        )
    program = lower_for_runtime(bnn, example_inputs)
    graph, tensors = program.to_file_parts()
    return write_model(path, graph, tensors)


__all__ = ["lower_for_runtime", "pack"]
