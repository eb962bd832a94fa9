"""Audit configuration (YAML or dict), validated with pydantic before any work starts.

    seed: 0
    data: {name: mnist-5k, split: test, n: 500, only_correct: false}
    sections:
      - kind: evasion
        attacks:
          - {attack: fgsm, eps: [0.05, 0.1, 0.2, 0.3]}
          - {attack: pgd, eps: [0.05, 0.1, 0.2, 0.3], params: {steps: 40}}
    thresholds: {evasion_robust_accuracy: 0.6}   # optional: see `Thresholds`

Each section's own keys are validated by that section kind's validator. `thresholds`
sets the scorecard's pass/warn/fail rules (bastion.audit.scorecard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.core import SEED_MAX, ConfigError, unknown_name
from bastion.params import validated
from bastion.safe_yaml import load_yaml_file

DEFAULT_EPS = [0.05, 0.1, 0.15, 0.2, 0.3]
MAX_N = 1_000_000  # examples per audit
MAX_BATCH = 65_536


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="data set; default: the checkpoint's or --data")
    split: str = "test"
    n: int = Field(500, ge=1, le=MAX_N, strict=True, description="examples to evaluate (first n of the split)")
    only_correct: bool = Field(False, strict=True,
                               description="keep only examples the model classifies correctly")
    root: str | None = None


class Thresholds(BaseModel):
    """The scorecard's rules (see docs/audit.md, "Scorecard and thresholds").

    Each headline metric is judged pass, warn or fail against these values; every field
    has a documented default and can be set under the config's top-level `thresholds:`.
    """

    model_config = ConfigDict(extra="forbid")
    evasion_robust_accuracy: float = Field(
        0.5, ge=0, le=1, description="pass when worst-case robust accuracy at the headline budget is at least this")
    evasion_warn_band: float = Field(
        0.1, ge=0, le=1, description="warn (not fail) when robust accuracy is at most this far below the threshold")
    evasion_norm: str = Field("linf", description="norm of the headline budget: linf | l2 | l1 | l0")
    evasion_budget: float | None = Field(
        None, ge=0, description="headline budget; default: the largest configured budget of `evasion_norm` "
                                "at most 0.3 of the input range (Linf) or the largest configured (other norms)")
    membership_tpr_at_1fpr: float = Field(
        0.02, ge=0, le=1, description="TPR at 1% FPR above this (twice chance) counts as leaking membership: "
                                      "fail when the 95% CI's lower bound exceeds it, warn when the estimate does")
    membership_auc: float = Field(
        0.6, ge=0.5, le=1, description="AUC rule, same as the TPR rule (0.5 is chance)")
    lira_min_shadows: int = Field(
        16, ge=1, le=1_000_000, strict=True, description="LiRA figures with fewer shadow models are not estimable")
    leakage_ssim: float = Field(
        0.5, ge=-1, le=1, description="fail when the best reconstruction's mean SSIM is at least this")
    leakage_warn_band: float = Field(
        0.2, ge=0, le=2, description="warn when mean SSIM is at most this far below the threshold")
    defense_masking_drop: float = Field(
        0.1, ge=0, le=1, description="defense section: flag gradient masking when robust accuracy under the "
                                     "adaptive attack is more than this below the plain attack's")
    dp_epsilon: float = Field(8.0, gt=0, description="fail when the claimed epsilon exceeds this")
    dp_epsilon_warn: float = Field(1.0, gt=0, description="warn when the claimed epsilon exceeds this")

    @field_validator("evasion_norm")
    @classmethod
    def _norm(cls, v: str) -> str:
        from bastion.core import parse_norm

        try:
            return parse_norm(v)
        except (ConfigError, ValueError):
            raise ValueError(f"evasion_norm must be linf, l2, l1 or l0, got {v!r}") from None


THRESHOLD_NAMES = tuple(Thresholds.model_fields)


class SectionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str
    name: str | None = None


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, ge=0, le=SEED_MAX, strict=True)
    batch_size: int = Field(250, ge=1, le=MAX_BATCH, strict=True)
    data: DataSpec = Field(default_factory=DataSpec)
    sections: list[SectionSpec] = Field(default_factory=list)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @field_validator("sections")
    @classmethod
    def _unique_names(cls, v: list[SectionSpec]) -> list[SectionSpec]:
        seen: set[str] = set()
        for i, s in enumerate(v):
            s.name = s.name or (s.kind if s.kind not in seen else f"{s.kind}-{i}")
            if s.name in seen:
                raise ValueError(f"duplicate section name {s.name!r}")
            seen.add(s.name)
        return v

    def section_dicts(self) -> list[dict[str, Any]]:
        return [s.model_dump() for s in self.sections]


def default_config() -> AuditConfig:
    """FGSM and PGD-Linf at five budgets: the `make demo` audit."""
    return parse_config({"sections": [{"kind": "evasion", "attacks": [
        {"attack": "fgsm", "eps": DEFAULT_EPS},
        {"attack": "pgd", "eps": DEFAULT_EPS, "params": {"steps": 40, "alpha": 0.01}},
    ]}]})


def _check_threshold_keys(raw: dict[str, Any]) -> None:
    th = raw.get("thresholds")
    if th is None:
        return
    if not isinstance(th, dict):
        raise ConfigError(f"thresholds must be a mapping of name: value, got {type(th).__name__}")
    for k in th:
        if k not in THRESHOLD_NAMES:
            raise unknown_name("threshold", str(k), THRESHOLD_NAMES)


def parse_config(raw: dict[str, Any]) -> AuditConfig:
    _check_threshold_keys(raw)
    cfg = validated(AuditConfig, raw, "audit config")
    if not cfg.sections:
        raise ConfigError("audit config has no sections; add e.g. {kind: evasion, attacks: [...]}")
    if cfg.thresholds.evasion_budget is not None:
        from bastion.audit.evasion_section import check_headline_budget

        check_headline_budget(cfg.section_dicts(), cfg.thresholds)
    return cfg


def load_config(path: str | Path | None) -> AuditConfig:
    if path is None:
        return default_config()
    p = Path(path)
    raw = load_yaml_file(p, "audit config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return parse_config(raw)
