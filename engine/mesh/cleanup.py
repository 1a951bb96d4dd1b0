"""Mesh clean-up after marching cubes: main components, small holes, smoothing, face budget."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import MeshError

log = logging.getLogger(__name__)

#: Face budgets outside this range are capped (with a warning).
MIN_FACES, MAX_FACES = 500, 2_000_000


def cap_face_budget(faces: int) -> int:
    """The budget clamped to [MIN_FACES, MAX_FACES], warning when it changes."""
    capped = int(min(max(int(faces), MIN_FACES), MAX_FACES))
    if capped != faces:
        log.warning("face budget %s capped to %d (allowed: %d to %d)", faces, capped, MIN_FACES, MAX_FACES)
    return capped


def keep_main_components(vertices: np.ndarray, faces: np.ndarray, min_fraction: float = 0.05):
    """Drop connected components whose surface area is below ``min_fraction`` of the largest's
    (floaters). Returns (vertices, faces) with unreferenced vertices removed."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=True)
    parts = mesh.split(only_watertight=False)
    if len(parts) == 0:
        raise MeshError("the extracted surface is empty", "check that the photos show the object")
    areas = np.array([p.area for p in parts])
    keep = [p for p, a in zip(parts, areas) if a >= min_fraction * areas.max()]
    merged = trimesh.util.concatenate(keep) if len(keep) > 1 else keep[0]
    log.info("components: kept %d of %d", len(keep), len(parts))
    return np.asarray(merged.vertices, dtype=np.float64), np.asarray(merged.faces, dtype=np.int64)


def fill_small_holes(vertices: np.ndarray, faces: np.ndarray):
    """Close small holes (trimesh's fan filling of simple boundary loops)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int = 5):
    """Taubin smoothing (shrink-free): removes marching cubes' voxel steps."""
    import trimesh

    if iterations <= 0:
        return vertices, faces
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=iterations)
    return np.asarray(mesh.vertices, dtype=np.float64), faces


def simplify(vertices: np.ndarray, faces: np.ndarray, budget: int):
    """Quadric-error decimation to at most ``budget`` faces (fast-simplification)."""
    if len(faces) <= budget:
        return vertices, faces
    import fast_simplification

    v, f = fast_simplification.simplify(
        np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.int32),
        target_count=int(budget),
    )
    return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
