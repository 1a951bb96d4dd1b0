"""Reading and writing posed sets, images and meshes."""

from .atomic import atomic_dir, atomic_file, check_output_path  # noqa: F401
from .mesh import read_mesh, write_glb, write_mesh, write_ply  # noqa: F401
from .posed import load_posed_set, read_transforms, write_posed_set  # noqa: F401
from .types import Mesh, PosedSet  # noqa: F401
