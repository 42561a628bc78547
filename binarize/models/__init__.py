"""Float PyTorch model definitions used by the tests, examples and benchmarks.

Plain ``nn.Module`` s written for this project (torchvision is not a dependency); the
ResNets keep torchvision's module names and state_dict keys. Look them up by name::

    >>> from binarize import models
    >>> models.names()[:4]
    ['convnext', 'efficientnet_b0', 'hourglass', 'mlp']
    >>> models.get("resnet_small", num_classes=10)(torch.randn(1, 1, 28, 28)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from binarize.models.convnext import ConvNeXt, convnext
from binarize.models.efficientnet import EfficientNet, efficientnet_b0
from binarize.models.hourglass import HourGlassNet, hourglass
from binarize.models.mobilenet import MobileNetV1, mobilenet_v1
from binarize.models.mobilenet_v3 import MobileNetV3, mobilenet_v3_small
from binarize.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet_small
from binarize.models.shufflenet import ShuffleNetV2, shufflenet_v2
from binarize.models.small import MLP, SmallCNN
from binarize.models.squeezenet import SqueezeNet, squeezenet

__all__ = [
    "MLP",
    "ConvNeXt",
    "EfficientNet",
    "HourGlassNet",
    "MobileNetV1",
    "MobileNetV3",
    "ResNet",
    "ShuffleNetV2",
    "SmallCNN",
    "SqueezeNet",
    "convnext",
    "efficientnet_b0",
    "get",
    "hourglass",
    "mobilenet_v1",
    "mobilenet_v3_small",
    "names",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_small",
    "shufflenet_v2",
    "squeezenet",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "convnext": convnext,
    "efficientnet_b0": efficientnet_b0,
    "hourglass": hourglass,
    "mlp": MLP,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v3_small": mobilenet_v3_small,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet_small": resnet_small,
    "shufflenet_v2": shufflenet_v2,
    "small_cnn": SmallCNN,
    "squeezenet": squeezenet,
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
