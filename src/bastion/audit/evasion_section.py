"""The `evasion` audit section: each configured attack over a list of budgets.

Fixed-budget attacks (FGSM, PGD, ...) run once per budget. Minimum-norm attacks (C&W,
DeepFool, ...) run once; robust accuracy at each budget is computed from the norms of
their results (never by clipping). Every (attack, budget) run is one resumable step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.attacks import registry
from bastion.attacks.base import MINIMUM_NORM, Attack
from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    SectionOutput,
    fig_to_png,
    register_section,
)
from bastion.core import AttackResult, ConfigError, parse_norm

GRID_EXAMPLES = 8


class AttackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack: str
    eps: list[float] | None = Field(None, max_length=1000,
                                    description="budgets; minimum-norm attacks: evaluation budgets")
    targeted: str | None = Field(None, description="most | ll | next | random")
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        v = [v] if isinstance(v, (int, float)) else v
        if isinstance(v, list) and any(isinstance(e, bool) for e in v):
            raise ValueError(f"budgets must be numbers, got {v}")
        return v

    @field_validator("eps")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("eps is an empty list; give at least one budget or omit it")
            for e in v:
                if not math.isfinite(e) or e < 0:
                    raise ValueError(f"every budget must be finite and non-negative, got {e} in {v}")
        return v

    @field_validator("targeted")
    @classmethod
    def _target_mode(cls, v: str | None) -> str | None:
        from bastion.attacks.evasion.targets import TARGET_MODES

        if v is not None and v not in TARGET_MODES:
            raise ValueError(f"targeted must be one of {', '.join(TARGET_MODES)}, got {v!r}")
        return v


class EvasionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "evasion"
    name: str | None = None
    attacks: list[AttackSpec]


def _parse(cfg: dict[str, Any]) -> EvasionSpec:
    try:
        spec = EvasionSpec.model_validate(cfg)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid evasion section:\n" + "\n".join(lines)) from None
    for a in spec.attacks:
        cls = registry.get(a.attack)
        if cls.kind != MINIMUM_NORM and not a.eps:
            raise ConfigError(f"attack {a.attack!r} is fixed-budget: give eps: [...]")
        if a.targeted is not None and not cls.supports_targeted:
            raise ConfigError(f"attack {a.attack!r} is untargeted only")
        registry.check_param_types(cls, a.attack, a.params)
        attack = _build(a, None if cls.kind == MINIMUM_NORM else (a.eps or [None])[0])
        norm = _norm_of(attack)
        for eps in a.eps or []:
            _check_budget(a.attack, norm, eps)
            if cls.kind != MINIMUM_NORM:
                _build(a, eps)  # every instance the run will create, built now
    return spec


# Largest sensible budget per norm for inputs in [0, 1]: Linf cannot exceed the value range;
# the others are capped far above any meaningful perturbation of a 4096 x 4096 RGB image.
MAX_BUDGET = {"linf": 1.0, "l2": 1e4, "l1": 1e8, "l0": 1e8}


def _check_budget(attack: str, norm: str, eps: float) -> None:
    if eps > MAX_BUDGET[norm]:
        raise ConfigError(f"attack {attack!r}: budget {eps:g} exceeds the largest sensible {norm} "
                          f"budget {MAX_BUDGET[norm]:g} for inputs in [0, 1]")


def _build(spec: AttackSpec, eps: float | None) -> Attack:
    params = dict(spec.params)
    cls = registry.get(spec.attack)
    if eps is not None and cls.kind != MINIMUM_NORM and "eps" in {f.name for f in dataclasses.fields(cls)}:
        params["eps"] = eps
    return registry.create(spec.attack, **params)


def _norm_of(attack: Attack) -> str:
    return parse_norm(getattr(attack, "norm", type(attack).norms[0]))


def _metrics(ctx: AuditContext, result: AttackResult) -> dict[str, Any]:
    try:
        from bastion.metrics.evasion import evasion_metrics
    except ImportError:
        return result.summary()
    out = result.summary()
    out.update(evasion_metrics(ctx.model, result))
    return out


def _label(spec: AttackSpec) -> str:
    if spec.label:
        return spec.label
    norm = spec.params.get("norm")
    base = spec.attack + (f"-{norm}" if norm else "")
    return base + (f" ({spec.targeted})" if spec.targeted else "")


@register_section("evasion", validate=lambda cfg: _parse(cfg) and None)
def run_evasion(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.attacks.evasion.targets import select_targets

    spec = _parse(cfg)
    model = ctx.model
    x, y = ctx.test.x, ctx.test.y
    clean_pred = model.predict(x).cpu()
    clean_acc = float((clean_pred == y).float().mean())
    out = SectionOutput(name=spec.name or "evasion", kind="evasion")
    curves: dict[str, list[tuple[float, float]]] = {}
    rows: list[dict[str, Any]] = []
    grids: list[tuple[str, dict[str, torch.Tensor]]] = []
    for a in spec.attacks:
        label = _label(a)
        target = None
        if a.targeted:
            target = select_targets(model, x, y, a.targeted, seed=ctx.seed).cpu()
        minimum_norm = registry.get(a.attack).kind == MINIMUM_NORM
        budgets = a.eps or []
        runs = [None] if minimum_norm else budgets
        for eps in runs:
            attack = _build(a, eps)
            if "batch_size" in {f.name for f in dataclasses.fields(attack)} and "batch_size" not in a.params:
                attack = dataclasses.replace(attack, batch_size=ctx.batch_size)
            key = f"evasion/{label}/eps={eps}/{a.model_dump_json()}/n={len(y)}/seed={ctx.seed}"

            def work(attack: Attack = attack, key: str = key,
                     target: torch.Tensor | None = target) -> dict[str, Any]:
                torch.manual_seed(ctx.seed)
                res = attack(model, x, y, target).cpu()
                fig = _metrics(ctx, res)
                fig["per_example"] = {
                    "success": res.success.int().tolist(),
                    "correct_after": (res.pred_adv == res.y).int().tolist(),
                    "norm": res.norms[_norm_of(attack)].tolist(),
                }
                k = min(GRID_EXAMPLES, res.n)
                ctx.save_tensors(key, {"x": res.x[:k], "x_adv": res.x_adv[:k], "y": res.y[:k],
                                       "pred_adv": res.pred_adv[:k]})
                return fig

            fig = ctx.step(key, work)
            per = fig.pop("per_example")
            if minimum_norm:
                norms = torch.tensor(per["norm"])
                success = torch.tensor(per["success"], dtype=torch.bool)
                correct = clean_pred == y
                for b in budgets:
                    robust = correct & ~(success & (norms <= b + 1e-6))
                    curves.setdefault(label, []).append((b, float(robust.float().mean())))
                rows.append({"attack": label, "eps": None, **_row(fig)})
            else:
                curves.setdefault(label, []).append((float(eps), fig["robust_accuracy"]))
                rows.append({"attack": label, "eps": eps, **_row(fig)})
            tensors = ctx.load_tensors(key)
            if tensors is not None and (minimum_norm or eps == max(budgets)):
                grids.append((f"{label}" + ("" if eps is None else f" eps={eps}"), tensors))
    out.summary = {"clean_accuracy": clean_acc, "n": len(y), "runs": rows,
                   "curves": {k: [list(p) for p in v] for k, v in curves.items()}}
    cols = ["attack", "eps", "robust_accuracy", "success_rate", "mean_l2", "mean_linf", "mean_l0",
            "queries_mean", "time_per_example_s"]
    extra = [k for k in ("mean_conf", "ssim", "psnr") if any(k in r for r in rows)]
    cols += extra
    out.tables.append(ReportTable("Evasion attacks", cols, [[r.get(c) for c in cols] for r in rows]))
    if curves:
        out.figures.append(ReportFigure("Robust accuracy versus budget", _curve_png(curves, clean_acc),
                                        "Accuracy on attacked test examples at each budget."))
    for title, t in grids:
        out.figures.append(ReportFigure(f"Clean vs adversarial: {title}", _grid_png(t, ctx.test.class_names),
                                        "Top: clean input with label; bottom: adversarial with prediction."))
    return out


def _row(fig: dict[str, Any]) -> dict[str, Any]:
    keys = ("robust_accuracy", "success_rate", "mean_l2", "mean_linf", "mean_l0", "queries_mean",
            "time_per_example_s", "mean_conf", "ssim", "psnr", "wall_time_s")
    return {k: fig.get(k) for k in keys if k in fig}


def _curve_png(curves: dict[str, list[tuple[float, float]]], clean: float) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in curves.items():
        pts = sorted(pts)
        ax.plot([0.0] + [p[0] for p in pts], [clean] + [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("budget (eps)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig_to_png(fig)


def _grid_png(t: dict[str, torch.Tensor], names: list[str]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = t["x"].shape[0]
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 3), squeeze=False)
    for i in range(k):
        for row, key, lab in ((0, "x", t["y"][i]), (1, "x_adv", t["pred_adv"][i])):
            img = t[key][i]
            ax = axes[row][i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy().clip(0, 1))
            name = names[int(lab)] if int(lab) < len(names) else str(int(lab))
            color = "black" if row == 0 or int(t["pred_adv"][i]) == int(t["y"][i]) else "red"
            ax.set_title(name, fontsize=8, color=color)
            ax.axis("off")
    return fig_to_png(fig)
