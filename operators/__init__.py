"""Operators (VIEWFORGE_OT_*): thin wrappers that read the scene, call bridge/engine and report.

``CLASSES`` is registered by the extension's ``register()`` after the scene settings
(:mod:`viewforge.properties`) and before the panels, which draw these operators.
"""

from __future__ import annotations

from . import cameras, jobs

CLASSES = [*cameras.CLASSES, *jobs.CLASSES]
