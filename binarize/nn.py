"""The binary operators under their user-facing name: ``binarize.nn`` is :mod:`operators`.

``from binarize.nn import BinaryConv2d, RSign, set_binarization`` gives the same objects as
``from operators import ...``. The operators live in their own top-level package so that
``passes`` (which builds binary networks out of them) never imports ``binarize`` (which
builds its API on the passes): the layers are runtime <- operators <- passes <- binarize.
"""

from __future__ import annotations

from operators import *  # noqa: F403  (the re-export is the point of this module)
from operators import __all__ as __all__
