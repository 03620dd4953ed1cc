"""Torch helpers shared by the server modules: device choice and atomic checkpoint writes."""

from __future__ import annotations

import os
from typing import Any

import torch

from edgekws.fileio import atomic_open

__all__ = ["pick_device", "atomic_torch_save"]


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
    return dev


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a torn file behind (temp file + rename)."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
