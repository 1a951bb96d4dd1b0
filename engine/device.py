"""The torch device a job runs on: resolved once per job from the user's choice and handed down."""

from __future__ import annotations


def resolve_device(name: str):
    """"auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda" or "mps" -> torch.device; raises
    DependencyError when the asked-for accelerator is not available."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from ..errors import DependencyError

        raise DependencyError("device 'cuda' was asked for but no CUDA GPU is available", "use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        from ..errors import DependencyError

        raise DependencyError("device 'mps' was asked for but Apple MPS is not available", "use --device auto or cpu")
    return torch.device(name)
