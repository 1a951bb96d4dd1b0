"""Viewforge: images to textured meshes inside Blender.

This file only registers the extension. It imports nothing from bpy at module level so that
``import viewforge.engine`` works in a plain Python (headless use, the command line, tests).
"""

_REGISTERED: list[type] = []


def _ui_classes() -> list[type]:
    from . import operators, panels

    return [*operators.CLASSES, *panels.CLASSES]


def register() -> None:
    import bpy

    from . import operators, panels

    for cls in _ui_classes():
        bpy.utils.register_class(cls)
        _REGISTERED.append(cls)
    operators.register_properties()
    panels.register_menus()


def unregister() -> None:
    import bpy

    from . import operators, panels

    panels.unregister_menus()
    operators.unregister_properties()
    for cls in reversed(_REGISTERED):
        bpy.utils.unregister_class(cls)
    _REGISTERED.clear()
