"""Give test models the non-trivial state that training would: a fresh BatchNorm is the
identity in eval mode (mean 0, variance 1, weight 1, bias 0), which hides folding bugs."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every BatchNorm's running mean from [-0.5, 0.5), running variance and weight from
    [0.5, 1.5), bias from [-0.5, 0.5); returns ``model`` (changed in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) - 0.5)
    return model
