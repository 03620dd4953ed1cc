"""The typer application every command module adds its commands to."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Distil audio datasets into tiny coresets and train keyword spotters for the edge.",
)
