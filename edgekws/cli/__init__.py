"""The ``edgekws`` command line: thin shells over library functions.

Modules, one per side of the toolkit: ``train`` (train, distill, export, evaluate, bundle, coreset, models, data;
``speech`` holds distill's speech-embedding path), ``device`` (listen, device collect|label|finetune|versions),
``ship`` (server, deploy, device update|rollback|installed), ``demo``, ``experiment``, ``bench``. All print through
:mod:`edgekws.cli.console` (one console on stderr, one error path, progress for terminals and for logs).

:func:`main` is the ``edgekws`` entry point. ``edgekws listen`` goes straight to its own parser, so a device that
listens loads neither typer nor pydantic nor the other commands; ``edgekws.cli.app`` (the typer application with
every command) is built on first use.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def _build() -> Any:
    from . import bench, demo, device, experiment, ship, train  # noqa: F401 - train adds its commands on import
    from ._app import app

    if not getattr(app, "_edgekws_built", False):
        device.register(app)
        ship.register(app)
        app.command("demo")(demo.demo)
        experiment.register(app)
        bench.register(app)
        app._edgekws_built = True  # type: ignore[attr-defined]
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Run the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["listen"]:
        from .listen import listen_main

        try:
            listen_main(args[1:])
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        return
    _build()(args=args, prog_name="edgekws")
