"""Operators (VIEWFORGE_OT_*): thin wrappers that read the scene, call bridge/engine and report.

``CLASSES`` is registered in order by the extension's ``register()`` (the settings
PropertyGroup and the preferences first), then :func:`register_properties` adds ``scene.viewforge``.
"""

from __future__ import annotations

from . import cameras, jobs, settings
from .settings import ViewforgeSettings, get_preferences, register_properties, unregister_properties  # noqa: F401

CLASSES = [*settings.CLASSES, *cameras.CLASSES, *jobs.CLASSES]
