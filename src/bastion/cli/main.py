"""Entry point of the `bastion` console script.

Bastion's own errors (bad names, shapes, ranges, files) exit with code 2 and one clear
line; usage errors exit 2 as well (click's convention).
"""

from __future__ import annotations

import importlib
import sys

from bastion.cli.app import app
from bastion.core import BastionError

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = (
    "bastion.cli.info",
    "bastion.cli.train",
    "bastion.cli.audit",
    "bastion.cli.attack",
    "bastion.cli.leak",
    "bastion.cli.mia",
    "bastion.cli.privacy",
)

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv`; return the exit code instead of exiting (used by tests)."""
    from bastion.cli.common import console

    try:
        app(args=argv, prog_name="bastion")  # standalone mode: always ends in SystemExit
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BastionError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
