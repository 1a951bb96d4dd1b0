"""Viewforge settings: the per-scene PropertyGroup (``scene.viewforge``) and access to the add-on
preferences.

Properties only: the panels (:mod:`.panels`) draw them and the operators (:mod:`.operators`)
read them; the preferences class itself is :class:`.panels.preferences.ViewforgePreferences`.
``CLASSES`` is registered before the operators and panels; :func:`register_properties` then adds
``scene.viewforge``.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .engine.mvgen import DEFAULT_MODEL

#: The extension's package name (``bl_idname`` of its preferences): "viewforge" in a development
#: checkout, "bl_ext.<repository>.viewforge" when installed as an extension.
ADDON_ID = __package__

#: The device choices of the preferences (the scene's Device adds "Preferences").
DEVICES = [
    ("AUTO", "Automatic", "CUDA if present, else Apple Metal (MPS), else the CPU"),
    ("CPU", "CPU", "Run on the CPU (slowest, works everywhere)"),
    ("CUDA", "CUDA", "Run on an NVIDIA GPU"),
    ("MPS", "Apple Metal", "Run on an Apple silicon GPU"),
]


class ViewforgeSettings(bpy.types.PropertyGroup):
    """Per-scene options of the Viewforge panel."""

    mode: EnumProperty(  # type: ignore[valid-type]
        name="Mode",
        items=[
            ("RECONSTRUCT", "Reconstruct", "Reconstruct a mesh from the photos of the scene's cameras", "CAMERA_DATA", 0),
            ("GENERATE", "Generate", "Generate a mesh from one image", "IMAGE_DATA", 1),
        ],
        default="RECONSTRUCT",
    )
    # --- Generate from image
    image_source: EnumProperty(  # type: ignore[valid-type]
        name="Image From",
        items=[("FILE", "File", "An image file on disk"), ("EDITOR", "Image", "An image loaded in Blender (Image Editor)")],
        default="FILE",
    )
    image_path: StringProperty(name="Image File", subtype="FILE_PATH", default="")  # type: ignore[valid-type]
    image: PointerProperty(name="Image", type=bpy.types.Image)  # type: ignore[valid-type]
    model: StringProperty(  # type: ignore[valid-type]
        name="Model",
        description="Multi-view generator: a registry id (zero123pp-v1.2) or a local model folder",
        default=DEFAULT_MODEL,
        subtype="NONE",
    )
    steps: IntProperty(  # type: ignore[valid-type]
        name="Sampling Steps", description="3D-aware sampling steps (2 generator evaluations each)", default=4, min=1, soft_max=12
    )
    size: FloatProperty(  # type: ignore[valid-type]
        name="Size", description="Longest side of the generated object; it stands on the 3D cursor",
        default=1.0, min=0.001, soft_max=10.0, subtype="DISTANCE", unit="LENGTH",
    )  # fmt: skip
    # --- Reconstruct from cameras
    selected_only: BoolProperty(  # type: ignore[valid-type]
        name="Selected Cameras Only",
        description="Use only the selected cameras (export, reconstruction) instead of all cameras in the scene",
        default=False,
    )
    photo_source: EnumProperty(  # type: ignore[valid-type]
        name="Photos From",
        items=[
            ("BACKGROUND", "Background Images", "Each camera's first background image"),
            ("FOLDER", "Folder", "A folder with one photo per camera, named after the camera"),
            ("PHOTOS", "Photos Without Cameras",
             "A folder of photos only: their cameras are estimated (structure from motion) and added to the scene"),
        ],
        default="BACKGROUND",
    )
    photo_folder: StringProperty(name="Photo Folder", subtype="DIR_PATH", default="")  # type: ignore[valid-type]
    refine_cameras: BoolProperty(  # type: ignore[valid-type]
        name="Refine Cameras",
        description="Refine the cameras' poses against the photos (placed by hand, they are a little off); "
        "the mesh is reconstructed at the refined poses",
        default=True,
    )
    update_cameras: BoolProperty(  # type: ignore[valid-type]
        name="Update Cameras",
        description="When the job ends, move the scene's cameras to their refined poses "
        "(one undo step with the new object; animated, parented or constrained cameras are left as they are)",
        default=False,
    )
    complete: EnumProperty(  # type: ignore[valid-type]
        name="Complete Unseen Sides",
        description="Generate the sides no photo saw with the multi-view generator (the Model below), kept aligned with the photos",
        items=[
            ("AUTO", "Auto", "With 1-4 photos, when the generator's weights are there (or may be downloaded)"),
            ("ON", "On", "Always (missing weights are an error)"),
            ("OFF", "Off", "Never: reconstruct from the photos alone (needs at least 2 photos)"),
        ],
        default="AUTO",
    )
    # --- Job options
    quality: EnumProperty(  # type: ignore[valid-type]
        name="Quality",
        description="Resolution, optimisation steps, face budget and texture size of the result",
        # the presets' figures, per mode, are in docs/blender.md (engine/jobs.py defines them)
        items=[
            ("DRAFT", "Draft", "Quick preview: fewer optimisation steps, a lighter mesh and a smaller texture"),
            ("STANDARD", "Standard", "The balance of time and detail"),
            ("HIGH", "High", "More optimisation steps, more faces and a larger texture: slower, more detail"),
        ],
        default="STANDARD",
    )
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device",
        items=[("DEFAULT", "Preferences", "The device chosen in the add-on preferences"), *DEVICES],
        default="DEFAULT",
    )
    seed: IntProperty(name="Seed", description="Random seed (same seed, same result)", default=0, min=0)  # type: ignore[valid-type]
    resolution: IntProperty(  # type: ignore[valid-type]
        name="Resolution Override", description="Longer image side of the fit in pixels (0 = from the quality preset)",
        default=0, min=0, soft_max=2048,
    )  # fmt: skip
    iterations: IntProperty(  # type: ignore[valid-type]
        name="Steps Override", description="Optimisation steps (0 = from the quality preset)", default=0, min=0, soft_max=30000
    )
    faces: IntProperty(  # type: ignore[valid-type]
        name="Faces Override", description="Face budget of the mesh (0 = from the quality preset)", default=0, min=0, soft_max=2_000_000
    )
    texture_size: IntProperty(  # type: ignore[valid-type]
        name="Texture Size Override", description="Side of the baked texture in pixels (0 = from the quality preset)",
        default=0, min=0, soft_max=8192,
    )  # fmt: skip
    # --- Output
    output_folder: StringProperty(  # type: ignore[valid-type]
        name="Output Folder",
        description="Folder for job outputs (meshes, textures); empty: next to the .blend file",
        subtype="DIR_PATH",
        default="",
    )
    output_name: StringProperty(  # type: ignore[valid-type]
        name="Name",
        description="Name of the new object and its file (empty: <scene>_reconstruction, or the image's name when generating)",
        default="",
    )
    keep_output: BoolProperty(  # type: ignore[valid-type]
        name="Keep Output File",
        description="Keep the .glb file after importing it (the texture is packed into the .blend either way)",
        default=True,
    )


class _DefaultPreferences:
    """The preferences' defaults, for when the add-on is registered without being enabled (tests)."""

    device = "AUTO"
    model_cache = ""
    offline = False
    install_platform = "AUTO"
    wheel_folder = ""
    extra_index_url = ""
    engine_python = ""


def get_preferences(context=None):
    """The add-on preferences, or their defaults when they are not available."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID) if context.preferences else None
    prefs = getattr(addon, "preferences", None)
    return prefs if prefs is not None else _DefaultPreferences()


def register_properties() -> None:
    bpy.types.Scene.viewforge = bpy.props.PointerProperty(type=ViewforgeSettings)


def unregister_properties() -> None:
    if hasattr(bpy.types.Scene, "viewforge"):
        del bpy.types.Scene.viewforge


CLASSES = [ViewforgeSettings]
