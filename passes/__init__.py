"""FX graph passes: each takes a torch.fx.GraphModule and returns one (or the runtime IR).

Conversion (``binarize.convert`` runs a recipe's list of these, in this order):

* ``base``: the pass protocol (``GraphPass`` -> ``PassResult``), ``run_passes`` (lint,
  recompile and drop unused submodules after every pass) and shared graph helpers.
* ``trace``: ``BinarizeTracer`` / ``trace``: eval-mode tracing with torch.nn, operators and
  user leaves; failures name the module and the line.
* ``shapes``: ``RecordShapes`` / ``propagate_shapes``: ``node.meta["tensor_meta"]`` by ShapeProp.
* ``canonicalize``: ``Canonicalize`` = ``OutOfPlace`` + ``ActivationsToModules`` (every ReLU
  spelling -> one inplace=False module per call site) + ``RecordShapes``.
* ``select``: ``SelectLayers``: which convs/linears become binary (first/last, depthwise and
  projection shortcuts stay float; type < regex < name overrides).
* ``binarize_layers``: ``BinarizeLayers``: selected layers -> BinaryConv2d / BinaryLinear.
* ``activations``: ``SwapActivations``: ReLU family -> PReLU / RPReLU / DyPReLU / identity in
  the binary part of the network.
* ``shortcuts``: ``AddShortcuts``: a Bi-Real shortcut around every binary conv whose shape allows.
* ``options``: the checks the option class of each pass (``LayerSelection``,
  ``BinarizerOptions``, ``ActivationOptions``, ``ShortcutOptions``) runs once, when built;
  ``binarize.recipes`` composes those objects.

Freezing (``binarize.pack``): ``fold`` and ``lower`` (student graph -> the runtime's op list,
``ir``).
"""
