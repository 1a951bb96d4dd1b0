"""Camera poses: photometric refinement against a splat model (``photometric.py``); pose
estimation by structure-from-motion comes with a later issue."""
