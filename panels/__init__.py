"""Panels, the add-on preferences and menu entries (drawing only; the operators do the work).

``CLASSES`` is registered by the extension's ``register()`` after the operators (the panels
name them), which then calls :func:`register_menus` to add the camera operators to File >
Import / Export and the job's progress to the status bar.
"""

from __future__ import annotations

from . import main, preferences
from .main import register_menus, unregister_menus  # noqa: F401

CLASSES = [*preferences.CLASSES, *main.CLASSES]
