"""Multi-view generators: one interface (:mod:`.base`), one registry, the backends.

``base``: :class:`~.base.MultiViewGenerator` (the interface the samplers use), the VP noise
schedule, :class:`~.base.GeneratorInfo` and the registry (:func:`~.base.load_generator`).
Backends: ``zero123pp`` (Zero123++ v1.2 on diffusers building blocks), ``oracle`` (the
PerturbedOracle testbed: ground-truth renders with view-inconsistent distortions, no weights).
``prep``: input-image preparation (alpha, background matting, recentring).
Heavy imports (torch, diffusers, transformers) happen inside the backends.
"""

#: The generator used when none is named (jobs, the command line, the add-on): a registry id
#: (Zero123++ v1.2, engine/mvgen/zero123pp.py). Kept here, free of imports, so the command line
#: can name it without loading the registry.
DEFAULT_MODEL = "zero123pp-v1.2"
