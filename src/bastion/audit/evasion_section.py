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
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.attacks import registry
from bastion.attacks.base import MINIMUM_NORM, Attack
from bastion.audit import plots
from bastion.audit.scorecard import FAIL, PASS, WARN, at_least, not_measured, thresholds_of
from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    ScoreRow,
    SectionOutput,
    fig_to_png,
    register_section,
)
from bastion.core import AttackResult, ConfigError, parse_norm
from bastion.params import validated

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
    spec = validated(EvasionSpec, cfg, "evasion section")
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


def resolved_params(attack: Attack, value_range: float = 1.0) -> dict[str, Any]:
    """The attack's parameters as actually run: defaults an attack resolves at call time
    (BIM's alpha and steps, PGD's eps and step size, MI-FGSM's alpha, ...) filled in."""
    p = attack.params()
    if hasattr(attack, "schedule"):  # BIM: (alpha, steps) from eps
        p["alpha"], p["steps"] = attack.schedule(value_range)
    if callable(getattr(attack, "budget", None)):
        p["eps"] = attack.budget(value_range)
    if callable(getattr(attack, "step_size", None)):
        p["alpha"] = attack.step_size(value_range)
    if "eps" in p and p["eps"] is None and "norm" in p:
        from bastion.attacks.evasion.pgd import DEFAULT_EPS

        p["eps"] = DEFAULT_EPS[parse_norm(p["norm"])] * value_range
    if "alpha" in p and p["alpha"] is None and p.get("eps") is not None and p.get("steps"):
        p["alpha"] = p["eps"] / p["steps"]  # MI-FGSM's default step
    return p


NORM_WORDS = {"linf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}


def describe_budget(norm: str, eps: float, value_range: float = 1.0) -> str:
    """A budget in words, e.g. 'Linf eps 0.1 (each input value moves by at most 25.5/255)'."""
    if norm == "linf":
        return (f"Linf eps {eps:g} (each input value moves by at most {eps / value_range * 255:.3g}/255 "
                "of its range)")
    if norm == "l0":
        return f"L0 budget {eps:g} (at most {eps:g} input values changed)"
    return f"{NORM_WORDS[norm]} eps {eps:g} (Euclidean length of the whole perturbation)" if norm == "l2" \
        else f"L1 eps {eps:g} (sum of absolute changes)"


def headline_budget(groups: list[tuple[str, float]], th: Any, value_range: float) -> tuple[str, float] | None:
    """The (norm, eps) the scorecard judges: the configured `evasion_budget`, else the
    largest configured budget of `evasion_norm` at most 0.3 of the input range (Linf) or the
    largest one (other norms); the smallest when every Linf budget is larger. When the norm
    was left at its default and no attack uses it, the first configured norm is used."""
    norm = th.evasion_norm
    if not any(g[0] == norm for g in groups) and "evasion_norm" not in th.model_fields_set and groups:
        norm = groups[0][0]
    budgets = sorted(e for g, e in groups if g == norm)
    if not budgets:
        return None
    if th.evasion_budget is not None:
        match = [e for e in budgets if abs(e - th.evasion_budget) <= 1e-9]
        return (norm, match[0]) if match else None
    if norm == "linf":
        small = [e for e in budgets if e <= 0.3 * value_range + 1e-9]
        return norm, (small[-1] if small else budgets[0])
    return norm, budgets[-1]


def check_headline_budget(sections: list[dict[str, Any]], th: Any) -> None:
    """Refuse a `thresholds.evasion_budget` no evasion attack is configured to run."""
    configured: list[tuple[str, float]] = []
    for s in sections:
        if s.get("kind") != "evasion":
            continue
        spec = _parse(s)
        for a in spec.attacks:
            norm = _norm_of(_build(a, None if registry.get(a.attack).kind == MINIMUM_NORM else a.eps[0]))
            configured += [(norm, float(e)) for e in a.eps or []]
    if not any(n == th.evasion_norm and abs(e - th.evasion_budget) <= 1e-9 for n, e in configured):
        have = sorted({f"{n} {e:g}" for n, e in configured}) or ["none"]
        raise ConfigError(f"thresholds.evasion_budget {th.evasion_budget:g} ({th.evasion_norm}) is not a "
                          f"configured evasion budget; configured: {', '.join(have)}")


def _frac(mask: torch.Tensor, of: torch.Tensor | None = None) -> float | None:
    if of is None:
        return float(mask.float().mean()) if mask.numel() else None
    k = int(of.sum())
    return float((mask & of).sum()) / k if k else None


def _budget_row(label: str, norm: str, eps: float | None, robust: torch.Tensor, fooled: torch.Tensor,
                correct: torch.Tensor, extra: dict[str, Any]) -> dict[str, Any]:
    from bastion.metrics.stats import wilson_interval

    n = robust.numel()
    k = int(robust.sum())
    return {"attack": label, "norm": norm, "eps": eps, "robust_accuracy": k / n if n else None,
            "robust_ci": list(wilson_interval(k, n)) if n else None,
            "asr": _frac(fooled, correct), "clean_error": (n - int(correct.sum())) / n if n else None, **extra}


@register_section("evasion", validate=lambda cfg: _parse(cfg) and None)
def run_evasion(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.attacks.evasion.targets import select_targets
    from bastion.defenses.certify.defended import attack_surrogate

    spec = _parse(cfg)
    th = thresholds_of(ctx)
    model, attacked_as = attack_surrogate(ctx.model)
    if attacked_as:  # a certified (random) model: attack and score its expected prediction
        ctx = dataclasses.replace(ctx, model=model)
    x, y = ctx.test.x, ctx.test.y
    vr = model.spec.value_range
    clean_pred = model.predict(x).cpu()
    correct = clean_pred == y
    clean_acc = float(correct.float().mean())
    name = spec.name or "evasion"
    out = SectionOutput(name=name, kind="evasion")
    if attacked_as:
        out.notes.append(f"Attacked and scored: {attacked_as}.")
    curves: dict[str, list[tuple[float, float]]] = {}
    curve_norms: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    grids: list[tuple[str, dict[str, torch.Tensor]]] = []
    grid_runs: dict[str, list[tuple[float | None, str, torch.Tensor]]] = {}  # label -> (budget, key, success)
    # (norm, eps) -> [(label, black_box, single_step, per-example robust)]
    at_budget: dict[tuple[str, float], list[tuple[str, bool, bool, torch.Tensor]]] = {}
    for a in spec.attacks:
        label = _label(a)
        cls = registry.get(a.attack)
        target = None
        if a.targeted:
            target = select_targets(model, x, y, a.targeted, seed=ctx.seed).cpu()
        minimum_norm = cls.kind == MINIMUM_NORM
        budgets = a.eps or []
        runs = [None] if minimum_norm else budgets
        for eps in runs:
            attack = _build(a, eps)
            if "batch_size" in {f.name for f in dataclasses.fields(attack)} and "batch_size" not in a.params:
                attack = dataclasses.replace(attack, batch_size=ctx.batch_size)
            norm = _norm_of(attack)
            curve_norms[label] = norm
            key = f"evasion/{label}/eps={eps}/{a.model_dump_json()}/n={len(y)}/seed={ctx.seed}"
            if attacked_as:  # not the steps of a run that attacked the network without its noise
                key = f"{key}/eot={getattr(model, 'samples', 0)}"

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
            success = torch.tensor(per["success"], dtype=torch.bool)
            after = torch.tensor(per["correct_after"], dtype=torch.bool)
            extra = {**_row(fig), "params": resolved_params(attack, vr),
                     "kind": "minimum-norm" if minimum_norm else "fixed-budget"}
            single = a.attack in SINGLE_STEP
            if minimum_norm:
                norms = torch.tensor(per["norm"])
                for b in budgets:
                    fooled = success & (norms <= b + 1e-6)
                    robust = correct & ~fooled
                    curves.setdefault(label, []).append((b, float(robust.float().mean())))
                    at_budget.setdefault((norm, float(b)), []).append((label, cls.black_box, single, robust))
                    # perturbation sizes over the examples fooled within this budget (own norm only)
                    within = {**extra, "mean_l2": None, "mean_linf": None, "mean_l0": None,
                              f"mean_{norm}": float(norms[fooled].mean()) if bool(fooled.any()) else None}
                    rows.append(_budget_row(label, norm, float(b), robust, fooled, correct, within))
                rows.append(_budget_row(label, norm, None, correct & ~success, success, correct, extra))
            else:
                robust = correct & after
                curves.setdefault(label, []).append((float(eps), float(robust.float().mean())))
                at_budget.setdefault((norm, float(eps)), []).append((label, cls.black_box, single, robust))
                rows.append(_budget_row(label, norm, float(eps), robust, success, correct, extra))
            grid_runs.setdefault(label, []).append((eps, key, success))
    for label, runs_of in grid_runs.items():
        eps, key = _grid_budget(runs_of, correct)
        tensors = ctx.load_tensors(key)
        if tensors is not None:
            grids.append((f"{label}" + ("" if eps is None else f" eps={eps:g}"), tensors))
    worst_rows, worst_mask = _worst_case(at_budget, correct)
    flags = _masking_flags(at_budget, worst_rows)
    for r in rows + worst_rows:
        r["flags"] = "; ".join(flags.get((r["norm"], r["eps"]), {}).get(r["attack"], []))
    per_key = f"evasion-per-example/{name}"
    ctx.save_tensors(per_key, {"clean_correct": correct.to(torch.uint8), "label": y,
                               **{f"robust:{n}:{e:g}": m.to(torch.uint8) for (n, e), m in worst_mask.items()}})
    out.summary = {"clean_accuracy": clean_acc, "n": len(y), "runs": rows, "worst_case": worst_rows,
                   "curves": {k: [list(p) for p in v] for k, v in curves.items()},
                   "per_example_tensors": per_key}
    cols = ["attack", "norm", "eps", "robust_accuracy", "asr", "clean_error", "mean_l2", "mean_linf",
            "mean_l0", "queries_mean", "time_per_example_s"]
    extra_cols = [k for k in ("mean_conf", "ssim", "psnr") if any(k in r for r in rows)]
    cols += [*extra_cols, "flags"]
    table_rows = rows + worst_rows
    out.tables.append(ReportTable(
        "Evasion attacks", cols, [[r.get(c) for c in cols] for r in table_rows],
        "robust_accuracy: share of all examples still classified correctly (examples the model "
        "already gets wrong count as not robust); asr: share of the initially correct examples "
        "the attack fools (reaches its target when targeted); clean_error: share misclassified "
        "before any attack. Minimum-norm attacks count as successful at a budget when their "
        "perturbation's norm is within it; eps '-' is the unbounded run. 'worst case' rows count "
        "an example as robust only when no attack at that budget fooled it. Budgets: "
        + "; ".join(describe_budget(n_, e_, vr) for n_, e_ in sorted(worst_mask)) + "."))
    out.tables.append(ReportTable(
        "Resolved attack parameters", ["attack", "eps", "parameters"],
        [[r["attack"], r["eps"], _params_text(r["params"])] for r in rows
         if r["kind"] == "fixed-budget" or r["eps"] is None]))
    _score(out, ctx, th, worst_rows, flags, vr, name)
    if curves:
        fig = plots.robustness_figure(curves, n=len(y), clean=clean_acc, norms=curve_norms)
        out.figures.append(ReportFigure("Robust accuracy versus budget", fig_to_png(fig),
                                        "Accuracy on attacked test examples at each budget, one panel per "
                                        "norm; shaded: 95% Wilson interval."))
    for title, t in grids:
        out.figures.append(ReportFigure(f"Clean vs adversarial: {title}", _grid_png(t, ctx.test.class_names),
                                        "Top: clean input with its label; middle: the perturbation, "
                                        "amplified to the full grey range (mid-grey = no change); bottom: "
                                        "adversarial input with the model's prediction (red = fooled)."))
    return out


def _row(fig: dict[str, Any]) -> dict[str, Any]:
    keys = ("mean_l2", "mean_linf", "mean_l0", "queries_mean", "time_per_example_s", "mean_conf", "ssim",
            "psnr", "wall_time_s")
    return {k: fig.get(k) for k in keys if k in fig}


SINGLE_STEP = ("fgsm",)
WORST = "worst case"


def _params_text(p: dict[str, Any]) -> str:
    skip = {"batch_size", "fast_path", "bf16", "fast", "eval_batch_size"}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in p.items() if k not in skip)


def _worst_case(at_budget: dict[tuple[str, float], list[tuple[str, bool, bool, torch.Tensor]]],
                correct: torch.Tensor) -> tuple[list[dict[str, Any]], dict[tuple[str, float], torch.Tensor]]:
    """Per budget: an example is robust only if it is correct and no attack fooled it
    (the AutoAttack convention, Croce and Hein 2020)."""
    rows, masks = [], {}
    for (norm, eps), entries in sorted(at_budget.items()):
        robust = correct.clone()
        for _, _, _, m in entries:
            robust &= m
        masks[(norm, eps)] = robust
        rows.append(_budget_row(f"{WORST} ({len(entries)} attack{'s' if len(entries) > 1 else ''})", norm, eps,
                                robust, correct & ~robust, correct,
                                {"kind": "worst-case", "attacks": [e[0] for e in entries]}))
    return rows, masks


def _masking_flags(at_budget: dict[tuple[str, float], list[tuple[str, bool, bool, torch.Tensor]]],
                   worst_rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, list[str]]]:
    """Signs of gradient masking (Athalye et al. 2018; Carlini et al. 2019): a black-box
    attack beating every white-box one, a single-step attack beating an iterative one, and
    worst-case robust accuracy rising with the budget. Keyed by (norm, eps) then attack."""
    flags: dict[tuple[str, float], dict[str, list[str]]] = {}
    for key, entries in at_budget.items():
        acc = {lab: float(m.float().mean()) for lab, _, _, m in entries}
        white = [acc[lab] for lab, bb, _, _ in entries if not bb]
        iterative = [acc[lab] for lab, bb, single, _ in entries if not bb and not single]
        for lab, bb, single, _ in entries:
            if bb and white and acc[lab] < min(white):
                flags.setdefault(key, {}).setdefault(lab, []).append(
                    "black-box beats every white-box attack: possible gradient masking")
            if single and iterative and acc[lab] < min(iterative):
                flags.setdefault(key, {}).setdefault(lab, []).append(
                    "single-step beats iterative attacks: possible gradient masking")
    by_norm: dict[str, list[dict[str, Any]]] = {}
    for r in worst_rows:
        by_norm.setdefault(r["norm"], []).append(r)
    for rs in by_norm.values():
        rs = sorted(rs, key=lambda r: r["eps"])
        for prev, cur in zip(rs, rs[1:], strict=False):
            if cur["robust_accuracy"] > prev["robust_accuracy"]:
                flags.setdefault((cur["norm"], cur["eps"]), {}).setdefault(cur["attack"], []).append(
                    f"robust accuracy rises from eps {prev['eps']:g} to {cur['eps']:g}: possible "
                    "gradient masking or too few attack steps")
    return flags


def _score(out: SectionOutput, ctx: AuditContext, th: Any, worst_rows: list[dict[str, Any]],
           flags: dict[tuple[str, float], dict[str, list[str]]], vr: float, name: str) -> None:
    n = len(ctx.test.y)
    out.threat_model = (
        "An attacker who controls the model's input at inference time and knows the model "
        "(white-box: weights and gradients; black-box attacks use only its outputs) adds a "
        "perturbation within the stated budget to make it misclassify.")
    out.advice = (
        "Low robust accuracy means small, often invisible input changes flip the prediction. "
        "Train with PGD or TRADES adversarial training (bastion.training.adversarial, Madry et al. "
        "2018; Zhang et al. 2019) at the budget you need; input preprocessing "
        "(bastion.defenses.preprocess) helps only against attackers that do not adapt to it, so "
        "audit it with an adaptive attack. Judge a defense by the worst case over all attacks, "
        "never by one attack.")
    groups = [(r["norm"], r["eps"]) for r in worst_rows]
    head = headline_budget(groups, th, vr)
    if head is None:
        metric = f"robust accuracy, {th.evasion_norm}"
        out.scorecard.append(not_measured(
            "evasion", metric, f"no {th.evasion_norm} budget is configured; set thresholds.evasion_norm "
            "or add attacks at that norm", section=name, threshold=th.evasion_robust_accuracy))
        return
    norm, eps = head
    row = next(r for r in worst_rows if (r["norm"], r["eps"]) == head)
    value, ci = row["robust_accuracy"], tuple(row["robust_ci"])
    verdict = at_least(value, th.evasion_robust_accuracy, th.evasion_warn_band)
    words = describe_budget(norm, eps, vr)
    attacks = ", ".join(row["attacks"])
    fooled = 1.0 - value
    meaning = {
        PASS: f"{value:.0%} of inputs keep their label against every attack tried ({attacks}) at {words}.",
        WARN: f"Borderline: {fooled:.0%} of inputs are misclassified under attack at {words}; "
              "consider adversarial training before shipping.",
        FAIL: f"An attacker within {words} makes the model misclassify {fooled:.0%} of inputs: not "
              "robust at this budget.",
    }[verdict]
    note = ""
    if th.evasion_budget is None:
        note = f"headline budget: {norm} eps {eps:g} (the default rule; set thresholds.evasion_budget to change it)"
    k = len(row["attacks"])
    out.scorecard.append(ScoreRow(
        threat="evasion", metric=f"robust accuracy (worst case over {k} attack{'' if k == 1 else 's'}), "
                                 f"{NORM_WORDS[norm]} eps {eps:g}",
        value=value, verdict=verdict, meaning=meaning, ci=ci, threshold=th.evasion_robust_accuracy,
        higher_is_better=True, section=name, note=note))
    if len(row["attacks"]) == 1:
        out.notes.append(f"Only one attack ran at {norm} eps {eps:g}; a single attack overestimates "
                         "robustness (add e.g. apgd or square).")
    if n < 100:
        out.notes.append(f"Only {n} examples: the 95% interval of robust accuracy is wide "
                         f"({ci[0]:.2f} to {ci[1]:.2f}).")
    for (fn, fe), per in sorted(flags.items()):
        for lab, msgs in per.items():
            for m in msgs:
                out.notes.append(f"{lab} at {fn} eps {fe:g}: {m}.")


def _grid_budget(runs: list[tuple[float | None, str, torch.Tensor]], correct: torch.Tensor) -> tuple[float | None, str]:
    """The run to show as an image grid: a realistic budget, the smallest at which the attack
    fools at least half of the correctly classified inputs, else the largest budget."""
    fixed = sorted((r for r in runs if r[0] is not None), key=lambda r: r[0])
    if not fixed:  # a minimum-norm attack: its one unbounded run
        return runs[0][0], runs[0][1]
    k = int(correct.sum())
    for eps, key, success in fixed:
        if k and float((success & correct).sum()) >= 0.5 * k:
            return eps, key
    return fixed[-1][0], fixed[-1][1]


def _grid_png(t: dict[str, torch.Tensor], names: list[str]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = t["x"].shape[0]
    delta = t["x_adv"] - t["x"]
    fig, axes = plt.subplots(3, k, figsize=(1.3 * k, 4.3), squeeze=False)
    for i in range(k):
        scale = float(delta[i].abs().max()) or 1.0
        rows = ((t["x"][i], t["y"][i], "black"),
                (0.5 + 0.5 * delta[i] / scale, None, "dimgray"),
                (t["x_adv"][i], t["pred_adv"][i],
                 "black" if int(t["pred_adv"][i]) == int(t["y"][i]) else "red"))
        for row, (img, lab, color) in enumerate(rows):
            ax = axes[row][i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy().clip(0, 1))
            if lab is not None:
                ax.set_title(names[int(lab)] if int(lab) < len(names) else str(int(lab)), fontsize=8, color=color)
            else:
                ax.set_title(f"max {scale:.2g}", fontsize=7, color=color)
            ax.axis("off")
    return fig_to_png(fig)
