"""Up-front checks of user-given paths: length limits, output files and folders writable.

Run before any long work, so that a read-only folder, a full disk or a name the file
system cannot hold is a one-line ConfigError, not a failure after training finished.
"""

from __future__ import annotations

import os
from pathlib import Path

from bastion.errors import ConfigError
from bastion.fileio import os_error, write_probe

NAME_MAX = 255  # bytes per path component (Linux, macOS)
PATH_MAX = 4096  # bytes per path


def check_path_length(path: Path, flag: str) -> None:
    """Refuse paths the file system cannot hold (ENAMETOOLONG) before any work."""
    text = str(path)
    if "\x00" in text:
        raise ConfigError(f"{flag}: a path cannot contain a NUL character")
    if len(os.fsencode(text)) > PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in path.parts):
        raise ConfigError(f"{flag}: path too long for the file system ({len(text)} characters, "
                          f"components at most {NAME_MAX} bytes)")


def check_input_path(path: Path | None, flag: str) -> None:
    if path is not None:
        check_path_length(path, flag)


def _probe_writable(folder: Path, flag: str, target: Path) -> None:
    """A read-only folder or a full disk fails here, before any work (see fileio.write_probe)."""
    try:
        write_probe(folder)
    except OSError as e:
        raise ConfigError(f"{flag} {target}: {os_error(folder, e, 'cannot write in')}") from None


def _existing_ancestor(path: Path, flag: str) -> Path:
    cur = path.absolute()
    while not cur.exists():
        if cur.is_symlink():
            raise ConfigError(f"{flag}: {cur} is a dangling symbolic link")
        cur = cur.parent
    if not cur.is_dir():
        raise ConfigError(f"{flag}: {cur} is a file, not a folder; choose another path")
    return cur


def check_out_file(path: Path | None, flag: str, suffixes: tuple[str, ...]) -> None:
    """An output file: non-empty, right suffix, not an existing folder, its folder writable."""
    if path is None:
        return
    if str(path) in ("", ".", "-"):
        what = "standard output is not supported" if str(path) == "-" else "empty or a folder"
        raise ConfigError(f"{flag} {str(path)!r}: {what}; give a file name ending in {' or '.join(suffixes)}")
    check_path_length(path, flag)
    if path.suffix not in suffixes:
        raise ConfigError(f"{flag} must end in {' or '.join(suffixes)}, got {path}")
    if path.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    _probe_writable(_existing_ancestor(path.parent, flag), flag, path)


def _is_cwd(path: Path) -> bool:
    try:
        return path.resolve() == Path.cwd().resolve()
    except (OSError, RuntimeError, ValueError):  # unresolvable (a loop, a vanished cwd): other checks speak
        return False


def check_out_dir(path: Path | None, flag: str) -> None:
    """An output folder: non-empty, not the current folder, not a file, writable."""
    if path is None:
        return
    if str(path) == "-":
        raise ConfigError(f"{flag} -: a run writes a folder of files, not standard output; "
                          "name a folder, e.g. runs/NAME")
    check_path_length(path, flag)
    if str(path) in ("", ".") or _is_cwd(path):
        raise ConfigError(f"{flag} is empty or the current folder; name a folder, e.g. runs/NAME")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag}: {path} exists and is not a folder")
    _probe_writable(_existing_ancestor(path, flag), flag, path)


__all__ = ["check_input_path", "check_out_dir", "check_out_file", "check_path_length"]
