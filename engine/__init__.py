"""The Viewforge engine: pure Python + numpy/torch, never bpy.

Submodules are imported on use (``from viewforge.engine import cameras``) so that importing the
package stays fast; torch, diffusers and gsplat are only imported inside the functions that need
them.
"""

from .errors import (  # noqa: F401  (re-exported: the error types are the engine's vocabulary)
    Cancelled,
    CameraError,
    DependencyError,
    ImageError,
    InputError,
    MeshError,
    NumericalError,
    OutputError,
    PosedSetError,
    ResourceError,
    ViewforgeError,
)
from .progress import CancelToken, ProgressCallback, ProgressEvent  # noqa: F401
