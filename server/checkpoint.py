"""Checkpoint files: torch's container, read as data only, with a checksum of the content.

A checkpoint is a dict of tensors and plain values (str, int, float, bool, None, lists, tuples, dicts) written by
``torch.save``. Reading uses ``torch.load(..., weights_only=True)``, which rebuilds tensors and plain values and
refuses any other object, so a hostile file cannot run code while it is read. Every checkpoint written here
carries ``content_sha256``: a sha256 over the content (each tensor's dtype, shape and bytes; each value's type and
exact text), checked when the file is read, so a flipped bit in the weights is noticed instead of trained on.

Each refusal is a :class:`CheckpointError` (a ``ValueError``) whose message is one line naming the file and what
is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from edgekws.server.runtime import atomic_torch_save

__all__ = [
    "CHECKSUM_KEY",
    "CheckpointError",
    "content_digest",
    "read_checkpoint",
    "read_train_state",
    "write_checkpoint",
    "write_train_state",
]

CHECKSUM_KEY = "content_sha256"
TRAIN_STATE_FORMAT = "edgekws-train-state"
TRAIN_STATE_VERSION = 1
# TrainConfig fields that may differ between an interrupted run and its resumption (hardware and stopping rule);
# every other field shapes the optimiser, the schedule or the data order and must match.
RESUMABLE_CHANGES = frozenset({"device", "threads", "patience"})


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says which file and why."""


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` into ``h`` with its type, so that equal digests mean equal content (and 1 != 1.0 != True)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, bool):
        h.update(f"B{obj!r};".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj};".encode())
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)}:".encode() + data)
    elif isinstance(obj, bytes):
        h.update(f"Y{len(obj)}:".encode() + obj)
    elif isinstance(obj, torch.Size):
        _feed(h, tuple(obj))
    else:
        raise TypeError(f"checkpoints hold tensors and plain values only, not {type(obj).__name__}")


def content_digest(obj: Any) -> str:
    """sha256 (hex) of a checkpoint's content, independent of how torch lays the file out."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays as Python values and tensors, paths as text, subclasses of bool, int, float and str
    as those types (what a data-only load rebuilds)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return type(obj)(_plain(v) for v in obj) if type(obj) in (list, tuple) else [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in (bool, int, float, str):
        return obj
    for plain in (bool, int, float, str):  # subclasses (torch's version string, enums) as their plain value
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` with its content checksum (atomically: the file is whole or not there).

    numpy values become Python values or tensors first, so the file reads back as data only.
    """
    body = _plain({k: v for k, v in obj.items() if k != CHECKSUM_KEY})
    atomic_torch_save({**body, CHECKSUM_KEY: content_digest(body)}, Path(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return (line[:160] + "…") if len(line) > 160 else line


def read_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint",
                    require_checksum: bool | Callable[[dict[str, Any]], bool] = True) -> dict[str, Any]:
    """Load a checkpoint as data (tensors on the CPU) and verify its checksum; the checksum key is removed.

    ``require_checksum`` may be a predicate on the loaded dict: False for files written before checkpoints
    carried a checksum (e.g. by their format version), which are then accepted without one.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated or damaged, not a torch checkpoint, holding anything but tensors and
            plain values (refused before it is built), not a dict, without a checksum, or with a wrong one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a {what}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # an import of a function or class: what a hostile pickle needs
            raise CheckpointError(f"{path}: refused: the file holds objects other than tensors and plain values "
                                  f"(loading them could run code); not a {what} written by edgekws") from None
        raise CheckpointError(f"{path}: not a readable {what} (damaged, truncated or another kind of file: "
                              f"{_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zip, pickle and torch each raise their own types for damaged files
        raise CheckpointError(f"{path}: not a readable {what} ({size} bytes; damaged, truncated or another kind "
                              f"of file: {exc.__class__.__name__}: {_first_line(exc)})") from None
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path}: not a {what} (holds a {type(blob).__name__}, not a dict)")
    recorded = blob.pop(CHECKSUM_KEY, None)
    if recorded is None:
        if require_checksum(blob) if callable(require_checksum) else require_checksum:
            raise CheckpointError(f"{path}: the {what} has no checksum (written by an older edgekws or another "
                                  "program); it cannot be checked for damage")
        return blob
    try:
        actual = content_digest(blob)
    except TypeError as exc:
        raise CheckpointError(f"{path}: not a {what}: {exc}") from None
    if actual != recorded:
        raise CheckpointError(f"{path}: the {what} is damaged: its content does not match its checksum "
                              f"(sha256 {actual[:16]}…, recorded {str(recorded)[:16]}…)")
    return blob


def write_train_state(path: str | os.PathLike, state: dict[str, Any], run: dict[str, Any]) -> None:
    """An epoch checkpoint of a training run; ``run`` describes the data it trains on (sizes, input kind)."""
    write_checkpoint({"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION, "run": run, **state}, path)


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def read_train_state(path: str | os.PathLike, config: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The state saved by :func:`write_train_state`, refused unless the run being resumed is the same run.

    ``config`` is the resuming run's ``TrainConfig.to_dict()``; every field except :data:`RESUMABLE_CHANGES` must
    equal the checkpoint's, and ``run`` (training-set size, classes, inputs) must too. The message names each
    setting that differs, with the checkpoint's value and this run's.
    """
    path = Path(path)
    st = read_checkpoint(path, what="training checkpoint")
    if st.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path}: not an edgekws training checkpoint (format {st.get('format')!r})")
    if not isinstance(st.get("version"), int) or st["version"] > TRAIN_STATE_VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {st.get('version')!r} is not one this edgekws "
                              f"reads ({TRAIN_STATE_VERSION}); upgrade edgekws or start again without --resume")
    saved = st.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: training checkpoint without its settings")
    diffs = []
    for k in sorted(set(saved) | set(config)):
        if k in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(k), config.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}.{s} {_show(a.get(s))} (now {_show(b.get(s))})" for s in sorted(set(a) | set(b))
                      if _norm(a.get(s)) != _norm(b.get(s))]
        elif _norm(a) != _norm(b):
            diffs.append(f"--{k.replace('_', '-')} {_show(a)} (now {_show(b)})")
    old_run = st.get("run") if isinstance(st.get("run"), dict) else {}
    diffs += [f"{k.replace('_', ' ')} {_show(old_run.get(k))} (now {_show(run.get(k))})" for k in sorted(run)
              if _norm(old_run.get(k)) != _norm(run.get(k))]
    if diffs:
        raise CheckpointError(f"{path}: cannot resume: the checkpoint is from a run with other settings: "
                              f"{'; '.join(diffs)}; resume with the same settings or start again without --resume")
    missing = [k for k in ("model", "opt", "sched", "epoch", "history", "np_rng", "torch_gen", "torch_rng")
               if k not in st]
    if missing:
        raise CheckpointError(f"{path}: incomplete training checkpoint (no {', '.join(missing)})")
    return st


def _norm(v: Any) -> Any:
    """Tuples and lists compare equal (a saved tuple may come back as either)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v
