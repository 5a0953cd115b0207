"""How ``functional.conv2d`` runs on each backend: the choice of lowering (:mod:`~cnnjax.lowering.choice`), the
implementations built from XLA's operations (:mod:`~cnnjax.lowering.convs`), one convolution per member inside a
vectorized sweep group (:mod:`~cnnjax.lowering.members`), and oneDNN's primitives (:mod:`~cnnjax.lowering.onednn`,
with its C++ handler in ``csrc/``)."""
