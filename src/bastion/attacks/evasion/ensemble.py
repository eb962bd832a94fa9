"""Worst case over an ensemble of attacks, AutoAttack style (Croce & Hein, 2020).

Runs APGD-CE, then APGD-T (targeted DLR against the 9 most likely other classes), then
the black-box Square attack, each only on the points that are still robust, and keeps
per example the first adversarial input found (the worst case over the ensemble). Before
attacking it runs AutoAttack's sanity checks and reports flags that point at gradient
masking rather than real robustness:

- `zero_gradients`: some inputs have an all-zero input gradient of the loss;
- `randomized`: two forward passes on the same input differ (use an EOT wrapper);
- `black_box_beats_white_box`: Square breaks points the gradient attacks could not.

Square is part of the ensemble through the attack registry ('square'); if it is not
available the ensemble runs without it and says so in `extras['skipped']`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion.apgd import APGD, APGDT
from bastion.attacks.evasion.pgd import DEFAULT_EPS, _bshape, check_budget
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, parse_norm

STAGES = ("apgd-ce", "apgd-t", "square")


def sanity_flags(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """AutoAttack-style checks on a batch: zero input gradients and randomised outputs."""
    xs = x[: min(x.shape[0], 256)].detach().requires_grad_(True)
    logits = model(xs)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y[: xs.shape[0]], reduction="sum"), xs)
    zero = g.flatten(1).abs().amax(1) == 0
    with torch.no_grad():
        a, b = model(xs.detach()), model(xs.detach())
    randomized = not torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    return {"zero_gradient_fraction": float(zero.float().mean()),
            "zero_gradients": bool(zero.any()), "randomized": randomized}


@register
@dataclass
class AutoAttack(Attack):
    """Worst case over APGD-CE, APGD-T and Square, each run on the still-robust points."""

    name = "autoattack"
    aliases = ("ensemble", "worst-case")
    kind = FIXED_BUDGET
    norms = ("linf", "l2")
    supports_targeted = False

    eps: float | None = None
    norm: str = "linf"
    steps: int = 100
    n_target_classes: int = 9
    square_queries: int = 5000
    attacks: tuple[str, ...] = STAGES
    check_sanity: bool = True
    seed: int = 0
    batch_size: int = 1024

    def validate(self) -> None:
        super().validate()
        if parse_norm(self.norm) not in self.norms:
            raise ConfigError(f"autoattack: norm {self.norm!r} not supported; use linf or l2")
        bad = [a for a in self.attacks if a not in STAGES]
        if bad or not self.attacks:
            raise ConfigError(f"autoattack: unknown stage(s) {bad}; valid stages: {', '.join(STAGES)}")
        if self.steps < 1 or self.square_queries < 1:
            raise ConfigError("autoattack: steps and square_queries must be >= 1")

    def _stage(self, name: str, eps: float) -> Attack | None:
        norm = parse_norm(self.norm)
        if name == "apgd-ce":
            return APGD(eps=eps, norm=norm, loss="ce", steps=self.steps, seed=self.seed,
                        batch_size=self.batch_size)
        if name == "apgd-t":
            return APGDT(eps=eps, norm=norm, steps=self.steps, seed=self.seed,
                         n_target_classes=self.n_target_classes, batch_size=self.batch_size)
        from bastion.attacks import registry
        try:
            cls = registry.get("square")
        except ConfigError:
            return None
        names = {f.name for f in fields(cls)}
        params: dict[str, Any] = {"eps": eps}
        if "norm" in names:
            params["norm"] = norm
        for key in ("n_queries", "max_queries", "queries"):
            if key in names:
                params[key] = self.square_queries
                break
        if "seed" in names:
            params["seed"] = self.seed
        return cls(**{k: v for k, v in params.items() if k in names})

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        norm = parse_norm(self.norm)
        eps = float(self.eps) if self.eps is not None else DEFAULT_EPS[norm] * model.spec.value_range
        check_budget(self.name, norm, eps, model)
        extras: dict[str, Any] = {"eps": eps, "norm": norm, "robust_after": {}, "skipped": []}
        flags: dict[str, Any] = sanity_flags(model, x, y) if self.check_sanity else {}
        with torch.no_grad():
            robust = model.predict(x, self.batch_size) == y
        extras["robust_after"]["clean"] = float(robust.float().mean())
        x_adv = x.clone()
        stage_of = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        queries = torch.zeros(x.shape[0], device=x.device)
        white_box_robust: torch.Tensor | None = None
        for s, name in enumerate(self.attacks):
            if name == "square" and white_box_robust is None:
                white_box_robust = robust.clone()
            idx = torch.nonzero(robust).flatten()
            if idx.numel() == 0:
                extras["robust_after"][name] = 0.0
                continue
            attack = self._stage(name, eps)
            if attack is None:
                extras["skipped"].append(name)
                warnings.warn("autoattack: the 'square' attack is not registered; "
                              "running the ensemble without it", stacklevel=3)
                continue
            res = attack(model, x[idx], y[idx])
            broke = res.success
            sel = idx[broke]
            x_adv[sel] = res.x_adv[broke]
            stage_of[sel] = s
            if res.queries is not None:
                queries[idx] += res.queries.to(queries)
            robust[sel] = False
            extras["robust_after"][name] = float(robust.float().mean())
        if white_box_robust is not None and "square" not in extras["skipped"]:
            flags["black_box_beats_white_box"] = bool((white_box_robust & ~robust).any())
            flags["black_box_extra_successes"] = int((white_box_robust & ~robust).sum())
        extras["flags"] = flags
        extras["warnings"] = _flag_messages(flags)
        for msg in extras["warnings"]:
            warnings.warn(f"autoattack: {msg}", stacklevel=3)
        extras["stage"] = stage_of.cpu()
        extras["stages"] = list(self.attacks)
        # keep every point inside the budget even if a stage returned something odd
        if norm == "linf":
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
        else:
            d = x_adv - x
            n = d.flatten(1).norm(dim=1).view(_bshape(d))
            x_adv = x + d * (eps / n.clamp_min(1e-12)).clamp(max=1.0)
        return RunOutput(x_adv, queries, extras)


def _flag_messages(flags: dict[str, Any]) -> list[str]:
    out = []
    if flags.get("zero_gradients"):
        out.append(f"{flags['zero_gradient_fraction']:.1%} of the checked inputs have zero input "
                   "gradients: possible gradient masking; try BPDA or a black-box attack")
    if flags.get("randomized"):
        out.append("the model's outputs change between identical forward passes: it is randomised; "
                   "attack it through bastion.attacks.evasion.EOT")
    if flags.get("black_box_beats_white_box"):
        out.append(f"Square broke {flags['black_box_extra_successes']} point(s) the gradient attacks "
                   "could not: the gradients are likely obfuscated")
    return out
