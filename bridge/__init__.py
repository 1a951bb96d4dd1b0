"""The only code that converts between Blender data (bpy) and engine types.

* :mod:`.cameras` -- Blender camera objects <-> engine :class:`~viewforge.engine.cameras.Camera`.
* :mod:`.images` -- Blender images <-> numpy arrays (row 0 = top, sRGB-encoded values).
* :mod:`.mesh` -- engine :class:`~viewforge.engine.io.types.Mesh` -> a Blender mesh object with a
  Principled BSDF material.

Every module imports bpy inside its functions, so importing this package does not need Blender
(documentation tools and ``python -c "import viewforge.bridge"`` work anywhere); calling the
functions does. The engine never imports from here.
"""
