"""Mesh stage: fitted Gaussians -> surface (TSDF fusion + marching cubes) -> clean-up and face
budget -> UV atlas (xatlas) -> base-colour texture baked from the photos and splat renders.
docs/mesh.md explains the choices and the math. Heavy imports happen inside the functions."""

from .pipeline import MeshConfig, MeshResult, splats_to_mesh

__all__ = ["MeshConfig", "MeshResult", "splats_to_mesh"]
