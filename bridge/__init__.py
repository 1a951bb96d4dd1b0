"""Everything between Blender (bpy) and the engine: data conversion, the jobs the panel starts,
and the engine's environment inside Blender.

Data:

* :mod:`.cameras` -- Blender camera objects <-> engine :class:`~viewforge.engine.cameras.Camera`.
* :mod:`.images` -- Blender images <-> numpy arrays (row 0 = top, sRGB-encoded values).
* :mod:`.mesh` -- engine :class:`~viewforge.engine.io.types.Mesh` -> a Blender mesh object with a
  Principled BSDF material.
* :mod:`.posed` -- posed sets (transforms.json + photos) <-> cameras with background photos.
* :mod:`.render` -- render a posed set of any mesh with Cycles (``viewforge render-views``).
* :mod:`.blendfile` -- write a mesh as a .blend file (the command line's ``-o OUT.blend``).

Jobs:

* :mod:`.jobs` -- the one running job: polled on the main thread, its result imported there.
* :mod:`.prepared` -- what every job shares: naming its output, the worker's environment,
  importing its result as one undo step.
* :mod:`.reconstruct` -- "Reconstruct from cameras": scene cameras with photos -> a mesh.
* :mod:`.generate` -- "Generate from Image": one image -> a mesh at the 3D cursor.
* :mod:`.weights` -- the generator's weights: in the model cache or not, licence, download.

Environment:

* :mod:`.deps` -- the engine's dependencies in Blender's Python: detection, installation.
* :mod:`.engine_python` -- run the worker in another Python environment instead.

Every module imports bpy inside its functions, so importing this package does not need Blender
(documentation tools and ``python -c "import viewforge.bridge"`` work anywhere); calling the
functions does. The engine never imports from here.
"""
