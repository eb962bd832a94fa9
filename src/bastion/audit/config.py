"""Audit configuration (YAML or dict), validated with pydantic before any work starts.

    seed: 0
    data: {name: mnist-5k, split: test, n: 500, only_correct: false}
    sections:
      - kind: evasion
        attacks:
          - {attack: fgsm, eps: [0.05, 0.1, 0.2, 0.3]}
          - {attack: pgd, eps: [0.05, 0.1, 0.2, 0.3], params: {steps: 40}}

Each section's own keys are validated by that section kind's validator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.core import SEED_MAX, ConfigError
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


def parse_config(raw: dict[str, Any]) -> AuditConfig:
    try:
        cfg = AuditConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid audit config:\n" + "\n".join(lines)) from None
    if not cfg.sections:
        raise ConfigError("audit config has no sections; add e.g. {kind: evasion, attacks: [...]}")
    return cfg


def load_config(path: str | Path | None) -> AuditConfig:
    if path is None:
        return default_config()
    p = Path(path)
    raw = load_yaml_file(p, "audit config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return parse_config(raw)
