"""Typed engine errors. Each carries what went wrong (``message``) and how to fix it (``fix``).

``str(error)`` is one line, ``"<message>. Fix: <fix>"``, suitable for a status bar, an operator
report or a command-line error. Operators and the CLI report these; they never swallow them.
"""

from __future__ import annotations


class ViewforgeError(Exception):
    """Base class of every error the engine raises on purpose."""

    #: Short default fix, used when a raise site gives none.
    default_fix: str = "see the Viewforge documentation"

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = " ".join(str(message).split()).rstrip(".")
        self.fix = " ".join(str(fix or self.default_fix).split()).rstrip(".")
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.message}. Fix: {self.fix}."


class InputError(ViewforgeError):
    """Something the user supplied is wrong (a file, a parameter, a scene setup)."""

    default_fix = "check the input and try again"


class CameraError(InputError):
    """A camera cannot be used (unsupported type, bad intrinsics, degenerate pose)."""

    default_fix = "use a perspective camera with a positive focal length"


class ImageError(InputError):
    """An image is missing, unreadable or has an unusable format."""

    default_fix = "check that the image file exists and is a PNG or JPEG"


class PosedSetError(InputError):
    """A posed set (transforms.json + images) is inconsistent or incomplete."""

    default_fix = "check transforms.json against the NeRF/Blender convention (see docs/formats.md)"


class MeshError(InputError):
    """A mesh file cannot be parsed or a mesh is empty or degenerate."""

    default_fix = "check that the file is a valid GLB, glTF, OBJ or PLY mesh"


class OutputError(ViewforgeError):
    """An output cannot be written where it was asked to go."""

    default_fix = "choose an output path in an existing, writable folder"


class DependencyError(ViewforgeError):
    """A dependency (a Python package, model weights, a device) is missing or unusable."""

    default_fix = "run the set-up command from README.md, or install the dependencies from the add-on preferences"


class ResourceError(ViewforgeError):
    """The job ran out of memory or another resource."""

    default_fix = "lower the resolution, the number of views or the number of Gaussians"


class NumericalError(ViewforgeError):
    """An optimisation diverged (NaN/Inf) and could not recover."""

    default_fix = "lower the learning rate or the resolution, or change the seed"


class Cancelled(ViewforgeError):
    """The user cancelled the job. Nothing was written at the output path."""

    default_fix = "run the job again when ready"

    def __init__(self, message: str = "cancelled by the user", fix: str | None = None) -> None:
        super().__init__(message, fix)
