"""The typer application object. Command modules register on it; `main.py` imports them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="bastion",
    help="Attack, defend and audit deep-learning models for security and privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
