"""Bounded, alias-free YAML reading for audit configs and `--arg key=value` values.

PyYAML's `safe_load` refuses Python tags but still expands aliases, so a few hundred
bytes of nested anchors ("billion laughs") grow to gigabytes before any validation runs.
`load_yaml_text` composes the document with a loader that refuses aliases and caps the
nesting depth, and `load_yaml_file` additionally caps the file size and requires UTF-8.
Every failure is a one-line `ConfigError`.

Limits (module constants; override the size with the environment variable
`BASTION_MAX_CONFIG_BYTES`):

- MAX_CONFIG_BYTES = 1 MiB: largest config file read.
- MAX_DEPTH = 64: deepest nesting of mappings and sequences.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import Node

from bastion.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_CONFIG_BYTES_ENV = "BASTION_MAX_CONFIG_BYTES"


def max_config_bytes() -> int:
    """MAX_CONFIG_BYTES, or the positive integer in $BASTION_MAX_CONFIG_BYTES."""
    raw = os.environ.get(MAX_CONFIG_BYTES_ENV)
    if raw is None or not raw.strip():
        return MAX_CONFIG_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_CONFIG_BYTES_ENV}={raw!r}: expected a positive number of bytes")
    return value


class _BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias nodes (`*name`) and nesting deeper than MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases (*{event.anchor}) are not allowed{_where(event.start_mark)};"
                              " write the value out in full")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"YAML nested deeper than {MAX_DEPTH} levels"
                                  f"{_where(self.peek_event().start_mark)}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _where(mark: Any) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _yaml_reason(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        problem = e.problem or e.context or "syntax error"
        return f"{problem}{_where(e.problem_mark or e.context_mark)}"
    return str(e)


def load_yaml_text(text: str, source: str = "YAML") -> Any:
    """Parse one YAML document from `text` without aliases or deep nesting.

    Raises ConfigError (one line, naming `source`) on syntax errors, aliases, nesting
    deeper than MAX_DEPTH, multiple documents and values PyYAML cannot construct
    (e.g. the date 2001-13-45)."""
    loader = None
    try:
        loader = _BoundedSafeLoader(text)   # the reader rejects control characters here
        return loader.get_single_data()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({_one_line(_yaml_reason(e))})") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ConfigError(f"{source}: YAML value cannot be read ({_one_line(e)})") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | Path, what: str = "config", limit: int | None = None) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (default max_config_bytes())."""
    p = Path(path)
    limit = max_config_bytes() if limit is None else limit
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(f"{what} {p} not found ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {p} is not a regular file")
    if st.st_size > limit:
        raise ConfigError(f"{what} {p} has {st.st_size} bytes, more than the {limit}-byte limit "
                          f"(set {MAX_CONFIG_BYTES_ENV} to raise it)")
    try:
        with p.open("rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{what} {p} cannot be read ({e.strerror or e})") from None
    if len(raw) > limit:
        raise ConfigError(f"{what} {p} is larger than the {limit}-byte limit")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start});"
                          " save it as UTF-8") from None
    return text


def load_yaml_file(path: str | Path, what: str = "config") -> Any:
    """Read a UTF-8 YAML file of at most max_config_bytes() and parse it with load_yaml_text."""
    return load_yaml_text(read_text_file(path, what), str(path))
