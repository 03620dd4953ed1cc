"""A bundle as the device sees it: graphs, classes, FeatureConfig, head, coreset, and local model versions.

:func:`open_bundle` verifies and opens a bundle directory (checksums and ed25519 signature) as an
:class:`edgekws.bundle.Bundle`, the one bundle reader of the project, raising :class:`DeviceModelError`. The device
keeps its own state (labels, clips, fine-tuned heads) in a *state directory*, never in the bundle, so a signed bundle
stays byte-identical:

``<state>/models/vNNNN/head.npz``   a fine-tuned head ``W (C, D)``, ``b (C,)`` and its ``classes``
``<state>/models/current``          the active version's name (written atomically)

:class:`DeviceModel` runs the bundle's classifier graph, or, once a local version exists, the embedding graph
followed by the local numpy head (so classes added on the device need no new graph). Most code wants
:class:`edgekws.device.Spotter`, which puts these together.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.bundle import Bundle, BundleError
from edgekws.features import FeatureConfig
from edgekws.fileio import atomic_open, atomic_write_bytes, atomic_write_json

from .backend import BackendError, open_backend

__all__ = [
    "DeviceModel",
    "DeviceModelError",
    "current_version",
    "default_state_root",
    "list_versions",
    "load_version",
    "open_bundle",
    "read_coreset",
    "state_dir_for",
    "write_version",
]


class DeviceModelError(RuntimeError):
    """A bundle, a local model version or a coreset cannot be used; the message names the file."""


def _read_head(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            W = np.asarray(z["W"], dtype=np.float32)
            b = np.asarray(z["b"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise DeviceModelError(f"cannot read head {path}: {exc}") from exc
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise DeviceModelError(f"{path}: expected W (C, D) and b (C,), got {W.shape} and {b.shape}")
    return W, b


def open_bundle(
    path: str | os.PathLike, public_key: Any = None, *, trust_embedded_key: bool = False, isolate: bool = False
) -> Bundle:
    """Verify and open a bundle directory (:func:`edgekws.bundle.load_bundle`: checksums and ed25519 signature).

    ``public_key``: the signer's pinned key (object, PEM file or key folder); ``None`` reads
    ``$EDGEKWS_HOME/keys/signing.pub``. ``trust_embedded_key`` checks integrity against the key in the manifest.
    A ``.tar`` archive is refused with the command that installs or unpacks it. ``isolate`` checks the signature in
    a short-lived child process (:func:`edgekws.bundle.verify_in_child`), so this one never loads ``cryptography``.
    """
    import tarfile

    from edgekws.bundle import load_bundle

    path = Path(path)
    if path.is_file():
        if tarfile.is_tarfile(path):
            raise DeviceModelError(
                f"{path} is a bundle archive; a bundle is opened from its unpacked folder: "
                "install it with `edgekws device update`, or unpack it (`mkdir B && tar -xf "
                f"{path} -C B`, then --bundle B; it is verified when opened)"
            )
        raise DeviceModelError(f"{path} is a file, not a bundle folder (one with manifest.json)")
    if not path.is_dir():
        raise DeviceModelError(f"bundle {path} does not exist or is not a directory")
    try:
        return load_bundle(path, public_key=public_key, trust_embedded_key=trust_embedded_key, isolate=isolate)
    except Exception as exc:  # BundleError, a bad key file: one clear message either way
        raise DeviceModelError(f"bundle refused: {exc}") from exc


# Local model versions ---------------------------------------------------------------------------------------


def default_state_root() -> Path:
    """``$EDGEKWS_DEVICE_HOME``, else ``$EDGEKWS_HOME/device``, else ``~/.local/share/edgekws/device``."""
    if os.environ.get("EDGEKWS_DEVICE_HOME"):
        return Path(os.environ["EDGEKWS_DEVICE_HOME"])
    if os.environ.get("EDGEKWS_HOME"):
        return Path(os.environ["EDGEKWS_HOME"]) / "device"
    return Path.home() / ".local" / "share" / "edgekws" / "device"


def state_dir_for(bundle: Bundle, root: str | os.PathLike | None = None) -> Path:
    """Where the device keeps labels, clips and fine-tuned heads for ``bundle``: ``root / <bundle id>``
    (``root`` defaults to :func:`default_state_root`)."""
    d = Path(root if root is not None else default_state_root()) / bundle.id
    d.mkdir(parents=True, exist_ok=True)
    return d


_VERSION_RE = re.compile(r"^v(\d{4,})$")


def list_versions(state: Path) -> list[str]:
    models = Path(state) / "models"
    if not models.is_dir():
        return []
    return sorted(
        (p.name for p in models.iterdir() if _VERSION_RE.match(p.name) and (p / "head.npz").is_file()),
        key=lambda n: int(n[1:]),
    )


def current_version(state: Path) -> str | None:
    ptr = Path(state) / "models" / "current"
    if not ptr.is_file():
        return None
    name = ptr.read_text().strip()
    return name if name in list_versions(state) else None


def write_version(
    state: Path, W: np.ndarray, b: np.ndarray, classes: list[str] | tuple[str, ...], meta: dict[str, Any]
) -> str:
    """Write a new head as the next version and make it current (both writes atomic)."""
    W = np.asarray(W, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if W.shape[0] != len(classes) or b.shape != (len(classes),):
        raise ValueError(f"head shapes {W.shape}, {b.shape} do not match {len(classes)} classes")
    versions = list_versions(state)
    n = int(versions[-1][1:]) + 1 if versions else 1
    name = f"v{n:04d}"
    d = Path(state) / "models" / name
    with atomic_open(d / "head.npz", "wb") as fh:
        np.savez(fh, W=W, b=b, classes=np.asarray(list(classes)))
    atomic_write_json(d / "meta.json", {"version": name, "classes": list(classes), **meta})
    atomic_write_bytes(Path(state) / "models" / "current", (name + "\n").encode())
    return name


def version_temperature(state: Path, name: str) -> float:
    """The softmax temperature a local version was written with (``meta.json`` ``temperature``), else 1."""
    try:
        T = json.loads((Path(state) / "models" / name / "meta.json").read_text()).get("temperature")
    except (OSError, ValueError):
        return 1.0
    return float(T) if isinstance(T, (int, float)) and math.isfinite(T) and T > 0 else 1.0


def load_version(state: Path, name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    p = Path(state) / "models" / name / "head.npz"
    W, b = _read_head(p)
    with np.load(p, allow_pickle=False) as z:
        classes = tuple(str(c) for c in z["classes"])
    if len(classes) != W.shape[0]:
        raise DeviceModelError(f"{p}: {len(classes)} classes for {W.shape[0]} head rows")
    return W, b, classes


# Coreset ------------------------------------------------------------------------------------------------------


def read_coreset(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], FeatureConfig]:
    """Read a coreset ``.npz`` with numpy alone: ``x (M, H, W)``, ``y (M, C)`` learned labels, classes, config."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            x = np.asarray(z["x"], dtype=np.float32)
            y = np.asarray(z["y"], dtype=np.float32)
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            names = z["class_names"] if "class_names" in z.files else meta.get("class_names")
            fc_raw = z["feature_config"] if "feature_config" in z.files else meta.get("feature_config")
    except (OSError, KeyError, ValueError) as exc:
        raise DeviceModelError(f"cannot read coreset {path}: {exc}") from exc
    if names is None or fc_raw is None:
        raise DeviceModelError(f"coreset {path} lacks class names or its feature configuration")
    classes = tuple(str(c) for c in np.asarray(names).tolist())
    fc = (
        FeatureConfig.from_json(str(fc_raw))
        if isinstance(fc_raw, (str, np.ndarray))
        else FeatureConfig.from_dict(fc_raw)
    )
    if x.ndim != 3 or y.shape != (len(x), len(classes)):
        raise DeviceModelError(f"coreset {path}: x {x.shape} / y {y.shape} do not fit {len(classes)} classes")
    return x, y, classes, fc


# Running a model ------------------------------------------------------------------------------------------------


@dataclass
class DeviceModel:
    """Logits (and embeddings) for model inputs ``(B, 1, H, W)``: normalised MFCC windows, or speech-embedding
    sequences when the bundle names that front end (:meth:`clip_inputs` makes either from audio).

    With ``head`` set, logits are ``embedding_graph(x) @ W.T + b`` (a local fine-tuned version); otherwise the
    bundle's classifier graph runs directly.
    """

    bundle: Bundle
    fmt: str | None = None  # None: the bundle's recommended format
    precision: str | None = None  # None: the recommended precision (fp32 for a format other than the recommended)
    threads: int = 1
    state: Path | None = None
    version: str | None = None
    classes: tuple[str, ...] = ()
    _classifier: Any = None
    _embedder: Any = None
    calibrate: bool = False
    temperature: float = 1.0
    chunk: int = 16  # rows per graph call: bounds activation memory when many windows go through at once
    _head: tuple[np.ndarray, np.ndarray] | None = None
    _version_mtime: float = field(default=-1.0, repr=False)
    _bundle_temperature: float | None = field(default=None, repr=False)
    _frontend: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            self.fmt, self.precision = self.bundle.choose_graph(self.fmt, self.precision)
        except BundleError as exc:
            raise DeviceModelError(str(exc)) from exc
        self.classes = self.bundle.classes
        self.reload()

    @property
    def feature_config(self) -> FeatureConfig:
        return self.bundle.feature_config

    @property
    def frontend(self) -> Any:
        """The bundle's front end (:func:`edgekws.device.frontend.frontend_for`: MFCC, or the speech-embedding
        graphs the bundle carries), opened once."""
        if self._frontend is None:
            from .frontend import FrontEndError, frontend_for

            try:
                self._frontend = frontend_for(self.bundle, threads=self.threads)
            except FrontEndError as exc:
                raise DeviceModelError(str(exc)) from exc
        return self._frontend

    def clip_inputs(self, clips: np.ndarray) -> np.ndarray:
        """Model inputs ``(N, 1, H, W)`` of clips ``(N, samples)`` (MFCC or speech-embedding sequences)."""
        return self.frontend.clips(clips)

    def reload(self) -> bool:
        """Switch to the state directory's current version if it changed; True when something changed."""
        name = current_version(self.state) if self.state is not None else None
        ptr = self.state / "models" / "current" if self.state is not None else None
        mtime = ptr.stat().st_mtime if ptr is not None and ptr.exists() else 0.0
        if name == self.version and mtime == self._version_mtime and (self._classifier or self._head):
            return False
        self._version_mtime = mtime
        if name is None:
            self._head = None
            self.classes = self.bundle.classes
            if self._classifier is None:
                self._classifier = self._open("classifier")
            if self.calibrate and self._bundle_temperature is None:
                shipped = self.bundle.detector.get("temperature")
                self._bundle_temperature = shipped if shipped is not None else self._cached_temperature()
            self.temperature = self._bundle_temperature or 1.0
        else:
            assert self.state is not None
            W, b, classes = load_version(self.state, name)
            self._head = (W, b)
            # local heads are trained with cross-entropy; one made from a bundle that ships a temperature carries
            # the temperature that matches the bundle head's confidence (device.finetune.match_temperature)
            self.temperature = version_temperature(self.state, name)
            self.classes = classes
        self.version = name
        return True

    def _open(self, kind: str) -> Any:
        try:
            return open_backend(self.bundle.graph_path(kind, self.fmt, self.precision), threads=self.threads)
        except (BackendError, BundleError) as exc:
            raise DeviceModelError(str(exc)) from exc

    def embed(self, x: np.ndarray) -> np.ndarray:
        if self._embedder is None:
            self._embedder = self._open("embedding")
        return self._chunked(self._embedder, x)

    def _chunked(self, backend: Any, x: np.ndarray) -> np.ndarray:
        if len(x) <= self.chunk:
            return backend.predict(x)
        return np.concatenate([backend.predict(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)])

    def _cached_temperature(self) -> float:
        """:meth:`fit_temperature`, remembered per graph in the state directory (so a restart skips it)."""
        key = f"{self.fmt}_{self.precision}"
        path = self.state / "temperature.json" if self.state is not None else None
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text())
                if key in cached:
                    return float(cached[key])
            except (OSError, ValueError):
                pass  # rewritten below
        T = self.fit_temperature()
        if path is not None:
            try:
                cached = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, ValueError):
                cached = {}
            atomic_write_json(path, {**cached, key: T})
        return T

    def fit_temperature(self, per_class: int = 20) -> float:
        """Softmax temperature of the bundle's classifier, fitted on its coreset (1.0 without a coreset).

        A model trained on soft labels with MSE (the distillation recipe) outputs logits of small range, so its
        softmax is nearly flat; thresholds mean the same thing for every model once the temperature minimising the
        coreset's negative log-likelihood divides the logits.
        """
        path = self.bundle.coreset_path
        if path is None:
            return 1.0
        x, y, _, _ = read_coreset(path)
        labels = np.argmax(y, axis=1)
        rng = np.random.default_rng(0)
        idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
        xs = x[idx][:, None]
        del x, y
        z = np.concatenate([self._classifier.predict(xs[i : i + 1]) for i in range(len(xs))]).astype(np.float64)
        t = labels[idx]
        best, best_nll = 1.0, np.inf
        for T in np.logspace(-3, 1, 41):
            s = z / T
            s -= s.max(axis=1, keepdims=True)
            nll = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(t)), t]))
            if nll < best_nll:
                best, best_nll = float(T), nll
        return best

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self._head is not None:
            W, b = self._head
            z = self.embed(x)
            if z.shape[1] != W.shape[1]:
                raise DeviceModelError(f"local head expects {W.shape[1]}-d embeddings, graph gives {z.shape[1]}")
            return z @ W.T + b
        return self._chunked(self._classifier, x)
