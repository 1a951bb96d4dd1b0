"""Panels and menu entries (drawing only; the operators do the work).

``CLASSES`` is registered by the extension's ``register()``, which then calls
:func:`register_menus` to add the camera operators to File > Import / Export.
"""

from __future__ import annotations

from . import main
from .main import register_menus, unregister_menus  # noqa: F401

CLASSES = [*main.CLASSES]
