"""Samplers that drive a multi-view generator (:mod:`viewforge.engine.mvgen`): plain few-step
sampling, 3D-aware sampling (reconstruct inside the loop, re-noise the renders; AlignCVC) and
IM-3D's iterative rounds."""
