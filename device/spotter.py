"""The device's front door: a keyword spotter opened from a bundle, fed audio blocks, giving detections.

::

    from edgekws.device import Spotter

    with Spotter.open("bundle/", public_key="signing.pub") as spotter:
        for block in blocks:                      # float32 mono at spotter.sample_rate, any length
            for d in spotter.feed(block):
                print(d.time, d.keyword, d.score)

:meth:`Spotter.open` verifies the bundle (signature and every file's sha256), runs the graph the bundle recommends
(format and precision; ``fmt``/``precision`` override it), uses the newest fine-tuned head of this device's state
folder when there is one, uses the softmax temperature and the detector threshold the bundle ships (a bundle
that ships no temperature gets one fitted on its coreset, cached in the state folder; one that ships no threshold
gets :class:`~edgekws.device.runtime.DetectorConfig`'s) and builds the streaming detector
(:class:`~edgekws.device.runtime.Detector`) with the bundle's front end. While audio flows, every
``check_every_s`` seconds of it, the spotter looks for a new local version (``edgekws device finetune``) and,
when it was opened through a symbolic link such as ``<root>/current``, for an update or rollback that switched the
link; it switches without losing a block, and says so through ``on_event``. ``edgekws listen``, ``device
collect``, the updater's smoke test and the benchmarks all run this object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.bundle import Bundle
from edgekws.features import FeatureConfig

from .model import DeviceModel, DeviceModelError, open_bundle, state_dir_for
from .runtime import Detection, Detector, DetectorConfig, Update

__all__ = ["Spotter", "SpotterEvent"]

SpotterEvent = dict[str, Any]
"""What :class:`Spotter` tells ``on_event``: ``{"event": "bundle", "bundle": path, "id": id}`` (switched to an
updated bundle), ``{"event": "bundle_refused", "bundle": path, "reason": text}`` (the new bundle did not verify or
cannot run here; the old one stays), ``{"event": "local_version", "version": "v0003" | None}`` (a fine-tuned head,
or the bundle's own head, is in use now)."""


class Spotter:
    """A keyword spotter: :meth:`open` it from a bundle, :meth:`feed` it audio, read :class:`Detection` objects.

    Attributes: ``classes`` (logit order; names starting with ``_`` never fire), ``sample_rate`` of the audio it
    expects, ``bundle`` (the verified :class:`~edgekws.bundle.Bundle`), ``model`` (its
    :class:`~edgekws.device.model.DeviceModel`), ``detector`` and ``graph`` (e.g. ``"onnx int8"``), ``config``
    (the detector's settings) and ``threshold_source``: where ``config.threshold`` came from, ``"given"`` (the
    ``threshold`` argument), ``"bundle"`` (the threshold the bundle ships) or ``"config"`` (the configuration's own,
    for a bundle that ships none).
    """

    def __init__(
        self,
        bundle: Bundle,
        model: DeviceModel,
        config: DetectorConfig,
        *,
        opened: dict[str, Any],
        link: Path | None = None,
        check_every_s: float | None = 2.0,
        on_event: Callable[[SpotterEvent], None] | None = None,
        threshold: float | None = None,
    ) -> None:
        self.bundle = bundle
        self.model = model
        self._base_config, self._threshold = config, threshold
        self.config, self.threshold_source = _with_threshold(config, threshold, bundle)
        self.detector = Detector(model, bundle.feature_config, self.config)
        self._opened = opened
        self._link = link
        self._target = _readlink(link) if link is not None else None
        self._every = None if check_every_s is None else max(1, round(check_every_s * self.sample_rate))
        self._since = 0
        self._on_event = on_event
        self.closed = False

    @classmethod
    def open(
        cls,
        bundle: str | os.PathLike,
        *,
        public_key: Any = None,
        trust_embedded_key: bool = False,
        state: str | os.PathLike | None = None,
        local: bool = True,
        fmt: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        config: DetectorConfig | None = None,
        threshold: float | None = None,
        thresholds: Mapping[str, float] | None = None,
        calibrate: bool = True,
        check_every_s: float | None = 2.0,
        on_event: Callable[[SpotterEvent], None] | None = None,
        isolate_verification: bool = False,
    ) -> Spotter:
        """Verify and open ``bundle`` (a folder, or a link to one such as ``<root>/current``).

        Parameters
        ----------
        public_key : the signer's pinned key (object, PEM file or key folder); None reads
            ``$EDGEKWS_HOME/keys/signing.pub``. ``trust_embedded_key`` checks integrity against the manifest's key.
        state : device state root (default ``$EDGEKWS_DEVICE_HOME``, ...); this bundle's folder in it holds the
            fine-tuned heads and the cached temperature. ``local=False`` ignores fine-tuned heads.
        fmt, precision : the graph to run (default: the bundle's recommendation). ``threads`` default: the
            bundle's recommendation.
        config : the detector's settings (:class:`DetectorConfig`); ``thresholds`` replaces its per-keyword
            thresholds. A threshold for a class the bundle does not know raises ValueError.
        threshold : the default posterior threshold; None: the one the bundle ships (its manifest's ``detector``),
            else ``config.threshold`` (0.6 by default). An updated bundle brings its own shipped threshold.
        calibrate : use the softmax temperature the bundle ships, else fit one on the bundle's coreset (cached per
            graph in the state folder); False leaves the logits as they are.
        check_every_s : look for a switched bundle or a new local version after this much audio (None: never).
        on_event : called with a :data:`SpotterEvent` when the spotter switches (or refuses to).
        isolate_verification : check the signature in a short-lived child process
            (:func:`edgekws.bundle.verify_in_child`), so this process never loads ``cryptography`` (``listen`` does).

        Raises
        ------
        DeviceModelError : the bundle does not verify, lacks the graph asked for, or cannot run here.
        ValueError : invalid detector settings.
        """
        cfg = config or DetectorConfig()
        if thresholds is not None:
            cfg = DetectorConfig(**{**_fields(cfg), "thresholds": dict(thresholds)})
        if threshold is not None:  # refused before the bundle is opened
            DetectorConfig(**{**_fields(cfg), "threshold": threshold})
        opened = {
            "public_key": public_key,
            "trust_embedded_key": trust_embedded_key,
            "state": state,
            "local": local,
            "fmt": fmt,
            "precision": precision,
            "threads": threads,
            "calibrate": calibrate,
            "isolate": isolate_verification,
        }
        path = Path(bundle)
        b, model = _load(path, opened)
        unknown = sorted(set(cfg.thresholds) - set(model.classes))
        if unknown:
            raise ValueError(f"thresholds name unknown keywords {unknown}; the model knows {list(model.classes)}")
        return cls(
            b,
            model,
            cfg,
            opened=opened,
            link=path if path.is_symlink() else None,
            check_every_s=check_every_s,
            on_event=on_event,
            threshold=threshold,
        )

    # what an app reads ------------------------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.detector.classes)

    @property
    def feature_config(self) -> FeatureConfig:
        return self.bundle.feature_config

    @property
    def sample_rate(self) -> int:
        return int(self.bundle.feature_config.sample_rate)

    @property
    def graph(self) -> str:
        return f"{self.model.fmt} {self.model.precision}"

    @property
    def version(self) -> str | None:
        """The local fine-tuned version in use (``"v0003"``), or None for the bundle's own head."""
        return self.model.version

    @property
    def window_seconds(self) -> float:
        return float(self.detector.window_seconds)

    # audio in, detections out ----------------------------------------------------------------------------------

    def feed(self, block: np.ndarray) -> list[Detection]:
        """Detections that ``block`` (mono float32 at :attr:`sample_rate`, any length) completed."""
        return [u.detection for u in self.hops(block) if u.detection is not None]

    def hops(self, block: np.ndarray) -> list[Update]:
        """Every inference ``block`` completed (one per hop: time, input level, logits, smoothed posteriors and
        the detection, if any), for views that show more than detections."""
        if self.closed:
            raise RuntimeError("this Spotter is closed")
        out = self.detector.feed(block)
        if self._every is not None:
            self._since += int(np.size(block))
            if self._since >= self._every:
                self._since = 0
                self.refresh()
        return out

    def run(
        self, blocks: Iterable[np.ndarray], on_update: Callable[[Update], None] | None = None
    ) -> Iterator[Detection]:
        """Feed ``blocks`` in turn; yield detections as they happen (``on_update`` sees every hop)."""
        for block in blocks:
            for upd in self.hops(block):
                if on_update is not None:
                    on_update(upd)
                if upd.detection is not None:
                    yield upd.detection

    def reset(self) -> None:
        """Forget the audio so far (a new stream starts)."""
        self.detector.reset()

    def refresh(self) -> bool:
        """Look now for an update that switched the bundle link and for a new local version; True when the
        spotter switched to either."""
        if self._link is not None:
            now = _readlink(self._link)
            if now is not None and now != self._target:
                self._target = now
                return self._switch_bundle(now)
        if self.model.state is not None and self.model.reload():
            self.detector.model_changed()
            self._emit({"event": "local_version", "version": self.model.version})
            return True
        return False

    def _switch_bundle(self, now: str) -> bool:
        assert self._link is not None
        try:
            b, model = _load(self._link, self._opened)
        except DeviceModelError as exc:
            self._emit({"event": "bundle_refused", "bundle": now, "reason": str(exc)})
            return False
        if b.feature_config.sample_rate != self.sample_rate:
            self._emit(
                {
                    "event": "bundle_refused",
                    "bundle": now,
                    "reason": f"it wants {b.feature_config.sample_rate} Hz audio, the stream is "
                    f"{self.sample_rate} Hz; open it again to use it",
                }
            )
            return False
        self.close_model()
        self.bundle, self.model = b, model
        self.config, self.threshold_source = _with_threshold(self._base_config, self._threshold, b)
        self.detector = Detector(model, b.feature_config, self.config)
        self._emit({"event": "bundle", "bundle": now, "id": b.id})
        return True

    def _emit(self, ev: SpotterEvent) -> None:
        if self._on_event is not None:
            self._on_event(ev)

    def close_model(self) -> None:
        self.model._classifier = self.model._embedder = self.model._frontend = None

    def close(self) -> None:
        """Release the graphs. Feeding a closed spotter raises RuntimeError."""
        if not self.closed:
            self.close_model()
            self.closed = True

    def __enter__(self) -> Spotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Spotter({self.bundle.path}, id {self.bundle.id}, {self.graph}, {len(self.classes)} classes, "
            f"local version {self.version or 'none'})"
        )


def _fields(cfg: DetectorConfig) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _with_threshold(cfg: DetectorConfig, threshold: float | None, bundle: Bundle) -> tuple[DetectorConfig, str]:
    """``cfg`` with its default threshold and where that came from: ``threshold`` when given (``"given"``), else
    the one ``bundle`` ships (``"bundle"``), else ``cfg``'s own (``"config"``)."""
    if threshold is not None:
        return DetectorConfig(**{**_fields(cfg), "threshold": threshold}), "given"
    shipped = bundle.detector.get("threshold")
    if shipped is not None:
        return DetectorConfig(**{**_fields(cfg), "threshold": shipped}), "bundle"
    return cfg, "config"


def _readlink(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:
        return None


def _load(path: Path, o: dict[str, Any]) -> tuple[Bundle, DeviceModel]:
    b = open_bundle(path, o["public_key"], trust_embedded_key=o["trust_embedded_key"], isolate=o["isolate"])
    state = state_dir_for(b, o["state"]) if o["local"] else None
    threads = o["threads"] if o["threads"] is not None else b.recommended["threads"]
    model = DeviceModel(
        b, fmt=o["fmt"], precision=o["precision"], threads=threads, state=state, calibrate=o["calibrate"]
    )
    return b, model
