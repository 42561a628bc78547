"""The export pipeline: a converted (student) ``GraphModule`` -> the runtime's op graph.

``lower`` (``passes.export.lower``: FX graph -> ``runtime.schema.Graph`` of registry ops, by
the spellings table ``passes.spellings``) -> ``fold`` (``passes.export.fold``: merge affines,
fold an affine feeding a binarizer into its integer threshold). ``binarize.pack`` writes the
result; ``binarize.convert`` dry-runs ``lower`` so an unsupported node fails before training.
The fx -> fx conversion passes live beside this package in ``passes/``.
"""

from passes.export.check import EXPORT_CHECKS, check_exportable
from passes.export.fold import fold, fold_threshold
from passes.export.lower import lower, pack_sign_bits

__all__ = ["EXPORT_CHECKS", "check_exportable", "fold", "fold_threshold", "lower", "pack_sign_bits"]
