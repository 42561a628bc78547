"""The dry run ``binarize.convert`` makes of the export, so a model the runtime cannot run
fails before the first training step instead of at ``pack``, after the training run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import fx

from operators.errors import ConversionError
from passes.export.fold import fold
from passes.export.lower import lower

EXPORT_CHECKS = ("raise", "warn", "off")


def check_exportable(
    gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], mode: str = "raise"
) -> None:
    """Lower and fold ``gm`` on ``example_inputs`` and throw the result away.

    ``mode``: ``"raise"`` a ``ConversionError`` (the default), ``"warn"`` (a ``UserWarning``
    with the same message; conversion goes on) or ``"off"``. The message names the node, the
    user's module and source line, and the spelling that works (``passes.spellings``).
    """
    if mode not in EXPORT_CHECKS:
        raise ConversionError(f"export_check must be one of {EXPORT_CHECKS}, got {mode!r}")
    if mode == "off":
        return
    try:
        if len(example_inputs) != 1 or not isinstance(example_inputs[0], torch.Tensor):
            raise ConversionError(
                f"the runtime runs models with one tensor input; this one takes "
                f"{len(example_inputs)} example input(s)"
            )
        x = example_inputs[0].detach().cpu()
        if x.dtype != torch.float32 or x.dim() not in (2, 4):
            raise ConversionError(
                f"the runtime takes float32 [N, C, H, W] or [N, F] inputs, got {x.dtype} with "
                f"shape {tuple(x.shape)}"
            )
        device = next((p.device for p in gm.parameters()), torch.device("cpu"))
        fold(lower(gm, (x.to(device),) if device.type == "cpu" else (x,)))
    except ConversionError as error:
        message = (
            f"this model converts but could not be packed for the runtime after training: "
            f"{error} (convert checks this before training; pass export_check='warn' or "
            "'off' to convert a model you will not pack)"
        )
        if mode == "warn":
            warnings.warn(message, stacklevel=3)
            return
        raise ConversionError(message) from error
