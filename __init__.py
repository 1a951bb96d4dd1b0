"""Viewforge: images to textured meshes inside Blender.

This file only registers the extension. It imports nothing from bpy at module level so that
``import viewforge.engine`` works in a plain Python (headless use, the command line, tests).
"""

_REGISTERED: list[type] = []
_SITE_PACKAGES: list[str] = []


def _ui_classes() -> list[type]:
    """Every class to register, in order: the scene settings' PropertyGroup, the operators, the
    preferences and panels (which name the operators)."""
    from . import operators, panels, properties

    return [*properties.CLASSES, *operators.CLASSES, *panels.CLASSES]


def register() -> None:
    import bpy

    from . import panels, properties
    from .bridge import deps, engine_python, jobs

    engine_python.warn_blender_version()  # once, for a Blender newer than the newest tested
    entry = deps.add_to_path()  # engine dependencies installed from the preferences
    if entry:
        _SITE_PACKAGES.append(entry)
    for cls in _ui_classes():
        bpy.utils.register_class(cls)
        _REGISTERED.append(cls)
    properties.register_properties()
    panels.register_menus()
    jobs.register_handlers()


def unregister() -> None:
    import bpy

    from . import panels, properties
    from .bridge import deps, jobs

    jobs.unregister_handlers()  # stops a running job (its result is not imported)
    panels.unregister_menus()
    properties.unregister_properties()
    for cls in reversed(_REGISTERED):
        bpy.utils.unregister_class(cls)
    _REGISTERED.clear()
    while _SITE_PACKAGES:
        deps.remove_from_path(_SITE_PACKAGES.pop())
