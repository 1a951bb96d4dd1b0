"""Camera poses: feature matches + bundle adjustment (``features.py``), photometric refinement
against a splat model (``photometric.py``), perturbation and error helpers (``evaluate.py``);
pose estimation from scratch by structure-from-motion comes with a later issue."""
