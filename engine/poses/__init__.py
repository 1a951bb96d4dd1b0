"""Camera poses: structure from motion for photos without cameras (``sfm.py``, pycolmap),
feature matches + bundle adjustment among posed photos (``features.py``), refinement of a few
photos' cameras against a model by render-match-PnP (``sparse.py``), photometric refinement
against a splat model (``photometric.py``), the splat fit with pose refinement (``refine.py``:
``FitConfig.pose_method``), perturbation and error helpers (``evaluate.py``)."""
