"""Freeze a trained binary network into the runtime's safe, bit-packed file.

    packed = binarize.pack(bnn, example_inputs=(x,), path="model.bnn")
    y = runtime.load(packed).predict(x.numpy())

Pipeline: ``passes.export.lower`` (student graph -> op list: binary layers become
quantize + bconv2d/bdense + affine, BatchNorm becomes affine) -> ``passes.export.fold`` (merge
affines; fold an affine feeding a binarizer into its integer threshold) -> ``runtime.format``
(safetensors container, graph JSON and format version in its metadata, atomic write).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch import nn

from operators import Binarizer, binary_layers
from operators.errors import ConversionError
from passes.export import fold, lower
from runtime.format import write_model

if TYPE_CHECKING:
    from runtime.schema import Graph


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
    if x.device.type == "meta":
        raise ConversionError(
            f"the example input {tuple(x.shape)} is on the meta device and holds no data; "
            "pack runs the model on it once to find every layer's shape. Pass a real CPU "
            f"tensor, e.g. torch.randn{tuple(x.shape)}."
        )
    if x.dtype != torch.float32 or x.dim() not in (2, 4):
        raise ConversionError(
            f"the example input must be a float32 [N, C, H, W] or [N, F] tensor, got "
            f"{x.dtype} with shape {tuple(x.shape)}."
        )
    return (x.detach().cpu(),)


def _check_weights(student: nn.Module) -> None:
    """The runtime reads float32 CPU tensors: say which parameter or buffer is not one."""
    for name, tensor in [*student.named_parameters(), *student.named_buffers()]:
        if tensor.device.type == "meta":
            raise ConversionError(
                f"{name} is on the meta device and holds no weights; load the trained "
                "weights first (model.to_empty(device='cpu'), then load_state_dict)."
            )
        if tensor.device.type != "cpu":
            raise ConversionError(
                f"pack reads weights on the CPU; move the model first (.cpu()), {name} is on "
                f"{tensor.device}."
            )
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ConversionError(
                f"{name} is {tensor.dtype}; pack folds float32 weights into the runtime's "
                "float32/bit-packed tensors. Convert the model back first (bnn.float())."
            )


def _check_runs(student: fx.GraphModule, x: torch.Tensor) -> None:
    """Run the student once, as lowering will (eval mode, no gradients), to name a bad input."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ConversionError(
            f"the model fails on the example input of shape {tuple(x.shape)}: {exc}. Pass "
            "example_inputs shaped like one batch the model was trained on (its channels "
            "and size)."
        ) from exc
    finally:
        student.train(was_training)


def _destination(path: str | PathLike[str]) -> Path:
    """``path`` as a Path, after checking that a file can be written there."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ConversionError(
            f"path {str(path)!r} is a folder; pass the file to write, e.g. "
            f"path={str(path / 'model.bnn')!r}."
        )
    if not folder.exists():
        raise ConversionError(
            f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist; create it "
            "first (os.makedirs) or pass another path."
        )
    if not folder.is_dir():
        raise ConversionError(
            f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder; pass "
            "another path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConversionError(
            f"cannot write {str(path)!r}: the folder {str(folder)!r} is not writable (a "
            "read-only file system or its permissions); pass a path in a writable folder."
        )
    return path


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
) -> Graph:
    """The folded op list ``pack`` writes (useful to inspect what the runtime will run)."""

    student = _student(bnn)
    _check_weights(student)
    inputs = _example_tuple(example_inputs)
    _check_runs(student, inputs[0])
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
        path: when given, the file is also written there atomically (a crash leaves the
            previous file or the new one; temp files of killed writers are removed). The
            folder must exist.

    Returns:
        The packed file's bytes.

    Raises:
        ConversionError: a node the runtime cannot run (named), bad example inputs (wrong
            shape, dtype or device), weights that are not float32 on the CPU, or a path that
            cannot be written (missing or read-only folder, a folder given as the file).
    """
    student = _student(bnn)
    destination = None if path is None else _destination(path)
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
    try:
        return write_model(destination, graph, tensors)
    except OSError as exc:
        raise ConversionError(
            f"cannot write {str(destination)!r}: {exc}; any previous file there is left as it "
            "was. Free disk space or pass a path in a writable folder."
        ) from exc


__all__ = ["lower_for_runtime", "pack"]
