"""Pluggable audit sections.

An audit config has a list of sections; each names a `kind` registered here (e.g.
'evasion', 'leakage', 'membership', 'dp'). A section function receives the shared
`AuditContext` and its own config dict and returns a `SectionOutput`: JSON-ready
figures, tables and images the report renders. Steps inside a section can be cached
with `ctx.step(key, fn)` so an interrupted audit resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bastion.core import Classifier, unknown_name
from bastion.data.dataset import Dataset


@dataclass
class ReportTable:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""  # one sentence under the table: norm, units, what a row is


VERDICTS = ("pass", "warn", "fail", "not measured")


@dataclass
class ScoreRow:
    """One row of the audit's scorecard: a threat's headline metric, judged against a threshold.

    `verdict` is one of VERDICTS. `value` is None when the metric was not measured or the
    data cannot support it (then `note` says why, e.g. "not estimable (needs >= 1,000
    non-members)"). `ci` is a 95% interval when the metric is a rate or a mean.
    """

    threat: str  # "evasion", "membership", "leakage", "dp", ...
    metric: str  # human name with norm and budget, e.g. "robust accuracy, Linf eps 0.1"
    value: float | None
    verdict: str
    meaning: str  # one sentence an engineer can act on
    ci: tuple[float, float] | None = None
    threshold: float | None = None
    higher_is_better: bool = True
    unit: str = ""  # "" for rates in [0, 1]; "eps" for a privacy budget, ...
    section: str = ""  # the section that measured it
    note: str = ""


@dataclass
class ReportFigure:
    """A PNG image for the report (embedded as base64 in report.html)."""

    title: str
    png: bytes
    caption: str = ""


@dataclass
class SectionOutput:
    name: str
    kind: str
    summary: dict[str, Any] = field(default_factory=dict)
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)
    scorecard: list[ScoreRow] = field(default_factory=list)
    threat_model: str = ""  # who the attacker is, what they know and can do
    advice: str = ""  # what the figures mean and what to try (Bastion defenses that help)
    notes: list[str] = field(default_factory=list)  # warnings, caps, figures the data cannot support


@dataclass
class AuditContext:
    """What every section may use. `step(key, fn)` runs `fn()` once and caches its
    JSON-ready return value in the run folder (resume support)."""

    model: Classifier
    train: Dataset
    test: Dataset
    out_dir: Path
    seed: int
    checkpoint: Path | None
    meta: dict[str, Any]
    step: Callable[[str, Callable[[], Any]], Any]
    save_tensors: Callable[[str, dict[str, torch.Tensor]], None]
    load_tensors: Callable[[str], dict[str, torch.Tensor] | None]
    batch_size: int = 250  # the config's batch_size: examples per attack batch
    thresholds: Any = None  # the config's `thresholds` (bastion.audit.config.Thresholds); None = defaults


SectionFn = Callable[[AuditContext, dict[str, Any]], SectionOutput]
ValidateFn = Callable[[dict[str, Any]], None]
SECTIONS: dict[str, SectionFn] = {}
VALIDATORS: dict[str, ValidateFn] = {}


def register_section(kind: str, validate: ValidateFn | None = None) -> Callable[[SectionFn], SectionFn]:
    """Register a section kind. `validate(cfg)` (optional) raises ConfigError on a bad
    section config; the runner calls it for every section before any work starts."""
    def deco(fn: SectionFn) -> SectionFn:
        SECTIONS[kind] = fn
        if validate is not None:
            VALIDATORS[kind] = validate
        return fn
    return deco


def validate_section(kind: str, cfg: dict[str, Any]) -> None:
    get_section(kind)
    if kind in VALIDATORS:
        VALIDATORS[kind](cfg)


def get_section(kind: str) -> SectionFn:
    import bastion.audit.builtin_sections  # noqa: F401  (registers the built-in kinds)
    if kind not in SECTIONS:
        raise unknown_name("audit section kind", kind, SECTIONS)
    return SECTIONS[kind]


def fig_to_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
