"""Reading and writing posed sets, images and meshes."""

from .atomic import atomic_dir, atomic_file, check_output_path  # noqa: F401
from .types import Mesh, PosedSet  # noqa: F401
