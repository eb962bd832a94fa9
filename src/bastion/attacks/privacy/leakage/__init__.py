"""Gradient leakage: reconstruct private training data from shared gradients or weight
updates (threat model: the attacker holds only a payload and the model architecture).

Attacks (each `fn(model, payload, config, reference=..., reference_labels=...,
init_pool=...) -> LeakageResult`):

- `cpl_attack` / `CPLConfig`: Client Privacy Leakage (Wei et al. 2020; dissertation Alg. 4)
- `dlg_attack` / `DLGConfig`: Deep Leakage from Gradients (Zhu et al. 2019)
- `idlg_attack` / `IDLGConfig`: improved DLG with analytic labels (Zhao et al. 2020)
- `inverting_gradients_attack` / `InvertingConfig`: Geiping et al. 2020

Payloads: `SharedGradient`, `WeightUpdate` (+ victim-side helpers `shared_gradient`,
`local_sgd_update`). `run_leakage(name, ...)` dispatches by name ('cpl', 'dlg', 'idlg', 'ig').
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from bastion.attacks.privacy.leakage.common import (
    INITS,
    LeakageConfig,
    LeakageResult,
    infer_labels,
    uniform_init_,
)
from bastion.attacks.privacy.leakage.cpl import CPLConfig, cpl_attack
from bastion.attacks.privacy.leakage.dlg import DLGConfig, dlg_attack
from bastion.attacks.privacy.leakage.idlg import IDLGConfig, idlg_attack
from bastion.attacks.privacy.leakage.inverting import InvertingConfig, inverting_gradients_attack
from bastion.attacks.privacy.leakage.payload import (
    Payload,
    SharedGradient,
    WeightUpdate,
    local_sgd_update,
    shared_gradient,
    trainable_params,
)
from bastion.core import Classifier, ConfigError, unknown_name

ATTACKS: dict[str, tuple[Callable[..., LeakageResult], type[LeakageConfig]]] = {
    "cpl": (cpl_attack, CPLConfig),
    "dlg": (dlg_attack, DLGConfig),
    "idlg": (idlg_attack, IDLGConfig),
    "ig": (inverting_gradients_attack, InvertingConfig),
}


def make_config(name: str, **params: Any) -> LeakageConfig:
    """The named attack's config with `params` overriding its defaults (None = default)."""
    if name not in ATTACKS:
        raise unknown_name("leakage attack", name, ATTACKS)
    cls = ATTACKS[name][1]
    valid = {f.name for f in fields(cls)}
    bad = sorted(set(params) - valid)
    if bad:
        raise ConfigError(f"leakage attack {name!r}: unknown parameter(s) {bad}; valid: {sorted(valid)}")
    cfg = cls(**{k: v for k, v in params.items() if v is not None})
    cfg.validate()
    return cfg


def run_leakage(name: str, model: Classifier, payload: Payload, config: LeakageConfig | None = None,
                *, reference: torch.Tensor | None = None, reference_labels: torch.Tensor | None = None,
                init_pool: tuple[torch.Tensor, torch.Tensor] | None = None,
                **params: Any) -> LeakageResult:
    """Run attack `name` ('cpl', 'dlg', 'idlg', 'ig') on `payload`."""
    if name not in ATTACKS:
        raise unknown_name("leakage attack", name, ATTACKS)
    fn, _ = ATTACKS[name]
    cfg = config if config is not None else make_config(name, **params)
    return fn(model, payload, cfg, reference=reference, reference_labels=reference_labels,
              init_pool=init_pool)


__all__ = [
    "ATTACKS", "INITS", "CPLConfig", "DLGConfig", "IDLGConfig", "InvertingConfig", "LeakageConfig",
    "LeakageResult", "Payload", "SharedGradient", "WeightUpdate", "cpl_attack", "dlg_attack",
    "idlg_attack", "infer_labels", "inverting_gradients_attack", "local_sgd_update", "make_config",
    "run_leakage", "shared_gradient", "trainable_params", "uniform_init_",
]
