"""Entry point of the `bastion` console script.

Bastion's own errors (bad names, shapes, ranges, files) exit with code 2 and one clear
line; so do file-system refusals (name too long, permission denied, full disk) and usage
errors (an unknown command or flag, a value of the wrong type), which the parser would
otherwise print as a framed multi-line panel.
"""

from __future__ import annotations

import importlib
import sys

from typer import Abort

from bastion.cli.app import app
from bastion.errors import BastionError

try:  # recent typer vendors its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = (
    "bastion.cli.info",
    "bastion.cli.train",
    "bastion.cli.defend",
    "bastion.cli.certify",
    "bastion.cli.audit",
    "bastion.cli.compare",
    "bastion.cli.attack",
    "bastion.cli.leak",
    "bastion.cli.mia",
    "bastion.cli.privacy",
    "bastion.cli.pool",
    "bastion.cli.fl_poison",
    "bastion.cli.fl",
    "bastion.cli.poison",
    "bastion.cli.scan",
)

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv`; return the exit code instead of exiting (used by tests)."""
    from bastion.cli.common import console, reset

    try:
        rc = app(args=argv, prog_name="bastion", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except NoArgsIsHelpError as e:  # `bastion` or a group alone: show its help
        print(e.format_message())
        return 2
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "bastion"
        hint = f" (see '{where} --help')"
        console.print(f"[bold red]error:[/] {one_line(e.format_message()).rstrip('.')}{hint}", highlight=False,
                      soft_wrap=True)
        return 2
    except ClickException as e:
        console.print(f"[bold red]error:[/] {one_line(e.format_message())}", highlight=False,
                      soft_wrap=True)
        return e.exit_code if e.exit_code else 1
    except Abort:
        console.print("[bold red]error:[/] aborted", highlight=False)
        return 1
    except BastionError as e:
        console.print(f"[bold red]error:[/] {one_line(str(e))}", highlight=False, markup=True,
                      soft_wrap=True)
        return 2
    except ValueError as e:
        if "null byte" not in str(e):  # a path holding NUL: click checks it with os.stat
            raise
        console.print("[bold red]error:[/] a path or name contains a NUL byte", highlight=False)
        return 2
    except OSError as e:
        # the file system refused (name too long, permission, full disk, I/O error): the
        # user's environment, not a bug in Bastion
        name = str(e.filename) if getattr(e, "filename", None) else ""
        where = f" ({name[:200]}{'...' if len(name) > 200 else ''})" if name else ""
        msg = one_line(f"{e.strerror or e}{where}")
        console.print(f"[bold red]error:[/] file system: {msg}", highlight=False, soft_wrap=True)
        return 2
    finally:
        reset()


def one_line(text: str) -> str:
    """A multi-line message (e.g. a list of config errors) joined into one line."""
    from rich.markup import escape as _escape

    return _escape("; ".join(p.strip() for p in text.splitlines() if p.strip()).replace(":;", ":"))


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
