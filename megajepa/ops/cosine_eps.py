"""The epsilon of the JEPA cosine, one definition for every implementation::

    cos(a, b) = <a, b> / (max(|a|, EPS) * max(|b|, EPS))

Imported by the PyTorch reference (:mod:`megajepa.ops.cosine`) and the Triton kernels
(:mod:`megajepa.ops.cosine_triton`), so neither imports the other for it.
"""
EPS = 1e-8
