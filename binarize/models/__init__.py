"""Float PyTorch model definitions used by the tests, examples and benchmarks.

Plain ``nn.Module`` s written for this project (torchvision is not a dependency); the
ResNets keep torchvision's module names and state_dict keys. Look them up by name::

    >>> from binarize import models
    >>> models.names()[:4]
    ['hourglass', 'mlp', 'mobilenet_v1', 'resnet18']
    >>> models.get("resnet_small", num_classes=10)(torch.randn(1, 1, 28, 28)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from binarize.models.hourglass import HourGlassNet, hourglass
from binarize.models.mobilenet import MobileNetV1, mobilenet_v1
from binarize.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet_small
from binarize.models.small import MLP, SmallCNN

__all__ = [
    "MLP",
    "HourGlassNet",
    "MobileNetV1",
    "ResNet",
    "SmallCNN",
    "get",
    "hourglass",
    "mobilenet_v1",
    "names",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_small",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "hourglass": hourglass,
    "mlp": MLP,
    "mobilenet_v1": mobilenet_v1,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet_small": resnet_small,
    "small_cnn": SmallCNN,
}


def names() -> list[str]:
    """Names accepted by :func:`get`, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` with freshly initialised weights; ``kwargs`` go to its
    constructor (e.g. ``num_classes``, ``in_channels``, ``width``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)
