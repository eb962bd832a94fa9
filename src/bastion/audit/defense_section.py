"""The `defense` audit section: the configured attacks against the undefended and the
defended model side by side, with the adaptive attack the defense calls for.

    - kind: defense
      defense: {name: bit-depth, params: {bits: 1}}      # or detector: {name: feature-squeezing}
                                                         # or checkpoint: defended.st
      attacks:
        - {attack: pgd, eps: [0.1, 0.3], params: {steps: 40}}
        - {attack: square, eps: [0.3], params: {max_queries: 500}}
      benign_floor: 0.05

Per attack and budget: clean accuracy, robust accuracy of the undefended model, of the
defended model under the attack as configured, and of the defended model under the
adaptive attack (Athalye, Carlini & Wagner 2018): BPDA for a non-differentiable
transformation, EOT for a random one (`Preprocessed.adaptive()`), and the detector-aware
PGD of Carlini & Wagner (2017) for a detector (Linf and L2 budgets). For a detector, an input is
defended when it is classified correctly or flagged, and the table adds the detection rate
(flagged share of the successful adversarial inputs) and the false-positive rate on the
clean inputs. The success-rate difference undefended ASR - defended ASR comes with its
95% interval (F = p1 - p2, V = p1(1-p1)/n1 + p2(1-p2)/n2, F +- 1.96 sqrt(V)). A defense
whose robust accuracy falls by more than `thresholds.defense_masking_drop` under the
adaptive attack is flagged (gradient masking); one whose clean accuracy falls more than
`benign_floor` below the undefended model's fails its benign-accuracy row. Every attack
run is one resumable step.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from bastion.attacks import registry
from bastion.attacks.base import MINIMUM_NORM
from bastion.audit.evasion_section import (
    NORM_WORDS,
    AttackSpec,
    _build,
    _label,
    _norm_of,
    describe_budget,
    headline_budget,
)
from bastion.audit.scorecard import FAIL, PASS, WARN, at_least, thresholds_of
from bastion.audit.sections import (
    AuditContext,
    ReportTable,
    ScoreRow,
    SectionOutput,
    register_section,
)
from bastion.core import Classifier, ConfigError, lp_norms
from bastion.params import validated

Step = Callable[[str, Callable[[], Any]], Any]
DEFENDED, ADAPTIVE, UNDEFENDED = "defended", "adaptive", "undefended"
ENSEMBLE_KINDS = ("ensemble", "xensemble")
REJECTING = ("detector", "xensemble")  # kinds whose flagged inputs count as defended


def _screens(model: Classifier) -> bool:
    """Whether `model` flags inputs (a detector or XEnsemble's reject option)."""
    from bastion.defenses.detect import Detected
    from bastion.defenses.xensemble import XEnsemble

    return isinstance(model, (Detected, XEnsemble))


class DefenseRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DefenseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "defense"
    name: str | None = None
    defense: DefenseRef | None = Field(None, description="an input transformation, or a certified classifier "
                                       "(smoothing, pixeldp)")
    detector: DefenseRef | None = Field(None, description="an evasion detector (calibrated on the training split)")
    checkpoint: str | None = Field(None, description="a defended checkpoint (written by `bastion defend`)")
    ensemble: DefenseRef | None = Field(None, description="a diversity ensemble from a pool: ensemble or xensemble "
                                        "(bastion.defenses.ensemble.defense)")
    attacks: list[AttackSpec] = Field(min_length=1)
    benign_floor: float = Field(0.05, ge=0, le=1, description="largest acceptable clean-accuracy drop")
    calib_n: int = Field(1000, ge=1, le=1_000_000, strict=True)
    fit_n: int = Field(2000, ge=2, le=1_000_000, strict=True)
    eot_samples: int = Field(10, ge=1, le=10_000, strict=True)
    adaptive: dict[str, Any] = Field(default_factory=dict,
                                     description="parameters of the detector-aware PGD (steps, lam, ...)")


def _parse(cfg: dict[str, Any]) -> DefenseSpec:
    from bastion.audit.evasion_section import _parse as parse_evasion
    from bastion.defenses.saved import check_defense

    spec = validated(DefenseSpec, cfg, "defense section")
    given = [k for k in ("defense", "detector", "checkpoint", "ensemble") if getattr(spec, k) is not None]
    if len(given) > 1:
        raise ConfigError(f"defense section: give one of defense, detector, ensemble or checkpoint, not "
                          f"{' and '.join(given)}")
    if spec.ensemble is not None:
        rec = check_defense(spec.ensemble.name, spec.ensemble.params)
        if rec["kind"] not in ENSEMBLE_KINDS:
            raise ConfigError(f"defense section: ensemble: takes ensemble or xensemble, got {spec.ensemble.name!r}")
    for key, kinds in (("defense", ("preprocess", "certified")), ("detector", ("detector",))):
        ref = getattr(spec, key)
        if ref is not None:
            rec = check_defense(ref.name, ref.params)
            if rec["kind"] in ENSEMBLE_KINDS:
                raise ConfigError(f"defense section: {ref.name!r} is a diversity ensemble; put it under ensemble:")
            if rec["kind"] not in kinds:
                kind = kinds[0]
                other = "detector" if kind == "preprocess" else "defense"
                raise ConfigError(f"defense section: {ref.name!r} is a {rec['kind']} defense; put it under "
                                  f"{other}:")
    if spec.checkpoint is not None:
        from bastion.models import read_metadata

        if "defended" not in read_metadata(spec.checkpoint):
            raise ConfigError(f"defense section: {spec.checkpoint} is not a defended checkpoint; write one with "
                              "`bastion defend`")
    parse_evasion({"kind": "evasion", "attacks": [a.model_dump() for a in spec.attacks]})
    if spec.adaptive:
        from bastion.defenses.detect import DetectorAwarePGD

        valid = {f.name for f in dataclasses.fields(DetectorAwarePGD)} - {"norm"}  # the attack's norm
        extra = sorted(set(spec.adaptive) - valid)
        if extra:
            raise ConfigError(f"defense section: the detector-aware attack has no parameter {', '.join(extra)}; "
                              f"valid: {', '.join(sorted(valid - {'eps'}))}")
        DetectorAwarePGD(**{**spec.adaptive, "eps": 0.3}).validate()
    return spec


# --------------------------------------------------------------------------- evaluation


def _outcome(scorer: Classifier, x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> dict[str, Any]:
    """Per-example predictions of the scoring model on x_adv, perturbation norms and, for a
    detector, flags on x_adv."""
    x_adv = x_adv.detach().cpu()
    out: dict[str, Any] = {"norm": lp_norms(x_adv - x.cpu())[norm].tolist()}
    if _screens(scorer):  # labels and flags from one pass (XEnsemble decides both at once)
        pred, flagged = scorer.predict_with_reject(x_adv)  # type: ignore[attr-defined]
        out["flagged"] = flagged.cpu().int().tolist()
    else:
        pred = scorer.predict(x_adv)
    return {"pred": pred.cpu().tolist(), **out}


def _run_attack(attack: Any, target: Classifier, scorer: Classifier, x: torch.Tensor, y: torch.Tensor,
                norm: str, seed: int) -> dict[str, Any]:
    import time

    from bastion.defenses.preprocess import GradientMaskingWarning

    torch.manual_seed(seed)
    start = time.perf_counter()
    with warnings.catch_warnings():  # the plain run through a masking defense is on purpose
        warnings.simplefilter("ignore", GradientMaskingWarning)
        res = attack(target, x, y)
    wall = time.perf_counter() - start
    torch.manual_seed(seed)
    return {**_outcome(scorer, x, res.x_adv, norm), "wall_time_s": wall}


def _adaptive_target(defended: Classifier, black_box: bool) -> tuple[Classifier | None, str]:
    """The surrogate a gradient attack should use on `defended` and its name; (None, '') when
    the plain attack already is the adaptive one."""
    from bastion.defenses.certify.defended import is_certified
    from bastion.defenses.ensemble.ensemble import Ensemble
    from bastion.defenses.preprocess import Preprocessed
    from bastion.defenses.xensemble import XEnsemble

    if is_certified(defended):  # random: EOT over the noise, for black-box attacks too
        return defended.adaptive(), f"EOT over {defended.eot_samples} noise draws"  # type: ignore[operator,attr-defined]
    if not black_box and isinstance(defended, XEnsemble):
        return defended.adaptive(), "BPDA mean-probability surrogate"
    if not black_box and isinstance(defended, Ensemble) and defended.consensus != "soft":
        return defended.adaptive(), "soft-vote surrogate"
    if black_box or not isinstance(defended, Preprocessed) or not defended.masks_gradients:
        return None, ""
    t = defended.transform
    name = ("EOT+BPDA" if t.random else "BPDA") if not t.differentiable else "EOT"
    return defended.adaptive(), name


def _frac(k: int, n: int) -> float | None:
    return k / n if n else None


def _masks(run: dict[str, Any], y: torch.Tensor, correct: torch.Tensor, budget: float | None,
           minimum_norm: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(robust, fooled, flagged) per example at `budget`: robust = correct on clean and not
    fooled; fooled = misclassified, within the budget (minimum-norm attacks) and not flagged."""
    pred = torch.tensor(run["pred"])
    wrong = pred != y
    if minimum_norm and budget is not None:
        wrong &= torch.tensor(run["norm"]) <= budget + 1e-6
    flagged = torch.tensor(run["flagged"], dtype=torch.bool) if run.get("flagged") is not None else None
    fooled = wrong & ~flagged if flagged is not None else wrong
    fooled &= correct
    return correct & ~fooled, fooled, flagged


def _rate(mask: torch.Tensor) -> tuple[float | None, list[float] | None]:
    from bastion.metrics.stats import wilson_interval

    n, k = mask.numel(), int(mask.sum())
    return (k / n, list(wilson_interval(k, n))) if n else (None, None)


def evaluate_defense(undefended: Classifier, defended: Classifier, attacks: list[AttackSpec],
                     x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, batch_size: int = 250,
                     step: Step | None = None, key: str = "defense", adaptive: dict[str, Any] | None = None,
                     masking_drop: float = 0.10) -> dict[str, Any]:
    """Every attack of `attacks` against `undefended` and `defended` (and its adaptive
    surrogate) on (x, y). `step(key, fn)` caches each run (default: run it). Returns
    {'clean': {...}, 'rows': [...], 'robust': {(norm, eps): per-example defended-robust mask
    over every attack, plain and adaptive}}."""
    from bastion.defenses.detect import Detected, DetectorAwarePGD
    from bastion.metrics.stats import diff_proportions

    step = step or (lambda _k, fn: fn())
    x, y = x.cpu(), y.cpu()
    from bastion.defenses.certify.defended import is_certified

    is_det = isinstance(defended, Detected)
    screens = _screens(defended)
    # a certified classifier is random: it is scored by its expected prediction over the noise
    scorer = defended.adaptive() if is_certified(defended) else defended  # type: ignore[operator]

    def clean_work() -> dict[str, Any]:
        torch.manual_seed(seed)
        out = {"undefended": undefended.predict(x).cpu().tolist()}
        if screens:
            pred, flagged = defended.predict_with_reject(x)  # type: ignore[attr-defined]
            out["flagged"] = flagged.cpu().int().tolist()
        else:
            pred = scorer.predict(x)
        return {**out, "defended": pred.cpu().tolist()}

    clean = step(f"{key}/clean/n={len(y)}/seed={seed}", clean_work)
    correct_u = torch.tensor(clean["undefended"]) == y
    correct_d = torch.tensor(clean["defended"]) == y
    fpr_mask = torch.tensor(clean["flagged"], dtype=torch.bool) if screens else None
    clean_rec = {"undefended_accuracy": float(correct_u.float().mean()),
                 "defended_accuracy": float(correct_d.float().mean()), "n": len(y),
                 "false_positive_rate": None if fpr_mask is None else float(fpr_mask.float().mean()),
                 "false_positive_ci": None if fpr_mask is None else _rate(fpr_mask)[1]}
    rows: list[dict[str, Any]] = []
    robust_all: dict[tuple[str, float], torch.Tensor] = {}
    detector_aware: dict[tuple[str, float], dict[str, Any]] = {}

    def detector_aware_run(norm: str, eps: float) -> dict[str, Any]:
        if (norm, eps) not in detector_aware:
            atk = DetectorAwarePGD(**{"batch_size": batch_size, **(adaptive or {}), "eps": eps, "norm": norm})
            # the Linf key keeps its earlier form so that finished runs are reused
            tag = "" if norm == "linf" else f"/norm={norm}"
            detector_aware[norm, eps] = step(
                f"{key}/pgd-detector-aware{tag}/eps={eps}/{json.dumps(adaptive or {}, sort_keys=True)}/"
                f"n={len(y)}/seed={seed}", lambda: _run_attack(atk, defended, defended, x, y, norm, seed))
        return detector_aware[norm, eps]

    for a in attacks:
        label = _label(a)
        cls = registry.get(a.attack)
        minimum_norm = cls.kind == MINIMUM_NORM
        budgets = [float(e) for e in a.eps or []]
        for eps in [None] if minimum_norm else budgets:
            attack = _build(a, eps)
            if "batch_size" in {f.name for f in dataclasses.fields(attack)} and "batch_size" not in a.params:
                attack = dataclasses.replace(attack, batch_size=batch_size)
            norm = _norm_of(attack)
            base = f"{key}/{label}/eps={eps}/{a.model_dump_json()}/n={len(y)}/seed={seed}"
            surrogate, how = _adaptive_target(defended, cls.black_box)
            targets = {UNDEFENDED: (undefended, undefended), DEFENDED: (defended, scorer)}
            if surrogate is not None:
                targets[ADAPTIVE] = (surrogate, scorer)
                how = f"{how}({label})"
            runs = {v: step(f"{base}/{v}", lambda t=t, s=s, attack=attack, norm=norm:
                            _run_attack(attack, t, s, x, y, norm, seed))
                    for v, (t, s) in targets.items()}
            for b in budgets if minimum_norm else [eps]:
                assert b is not None
                adaptive_run, adaptive_name = runs.get(ADAPTIVE), how
                if is_det and norm in DetectorAwarePGD.norms and not cls.black_box:
                    adaptive_run, adaptive_name = detector_aware_run(norm, b), "pgd-detector-aware"
                rob_u, fool_u, _ = _masks(runs[UNDEFENDED], y, correct_u, b, minimum_norm)
                rob_d, fool_d, flag_d = _masks(runs[DEFENDED], y, correct_d, b, minimum_norm)
                rec: dict[str, Any] = {"attack": label, "norm": norm, "eps": b,
                                       "kind": "minimum-norm" if minimum_norm else "fixed-budget",
                                       "clean_undefended": clean_rec["undefended_accuracy"],
                                       "clean_defended": clean_rec["defended_accuracy"]}
                rec["robust_undefended"], rec["robust_undefended_ci"] = _rate(rob_u)
                rec["robust_defended"], rec["robust_defended_ci"] = _rate(rob_d)
                worst = rob_d.clone()
                asr_u = _frac(int(fool_u.sum()), int(correct_u.sum()))
                asr_d = _frac(int(fool_d.sum()), int(correct_d.sum()))
                rec.update(asr_undefended=asr_u, asr_defended=asr_d, adaptive_attack=adaptive_name or None,
                           robust_adaptive=None, robust_adaptive_ci=None, asr_adaptive=None)
                if adaptive_run is not None:
                    rob_a, fool_a, flag_a = _masks(adaptive_run, y, correct_d, b, minimum_norm and
                                                   adaptive_name != "pgd-detector-aware")
                    rec["robust_adaptive"], rec["robust_adaptive_ci"] = _rate(rob_a)
                    rec["asr_adaptive"] = _frac(int(fool_a.sum()), int(correct_d.sum()))
                    worst &= rob_a
                    if flag_a is not None:
                        rec["detection_rate_adaptive"] = _detection(adaptive_run, y, correct_d, flag_a)
                if flag_d is not None:
                    rec["detection_rate"] = _detection(runs[DEFENDED], y, correct_d, flag_d, b if minimum_norm
                                                       else None)
                    rec["false_positive_rate"] = clean_rec["false_positive_rate"]
                strongest = rec["asr_adaptive"] if rec["asr_adaptive"] is not None else asr_d
                for tag, p2 in (("asr_diff", asr_d), ("asr_diff_adaptive", rec["asr_adaptive"])):
                    if asr_u is not None and p2 is not None and int(correct_d.sum()):
                        d = diff_proportions(asr_u, int(correct_u.sum()), p2, int(correct_d.sum()))
                        rec[tag], rec[f"{tag}_ci"] = d.diff, [d.low, d.high]
                    else:
                        rec[tag], rec[f"{tag}_ci"] = None, None
                rec["asr_strongest"] = strongest
                drop = (rec["robust_defended"] - rec["robust_adaptive"]) if rec["robust_adaptive"] is not None \
                    else None
                rec["adaptive_drop"] = drop
                rec["masking"] = bool(drop is not None and drop > masking_drop)
                rec["wall_time_s"] = sum(r.get("wall_time_s", 0.0) for r in runs.values())
                prev = robust_all.get((norm, b))
                robust_all[(norm, b)] = worst if prev is None else prev & worst
                rows.append(rec)
    return {"clean": clean_rec, "rows": rows, "robust": robust_all}


def _detection(run: dict[str, Any], y: torch.Tensor, correct: torch.Tensor, flagged: torch.Tensor,
               budget: float | None = None) -> float | None:
    """Share of the successful adversarial inputs (misclassified, within budget, from
    correctly classified clean inputs) that the detector flags."""
    wrong = (torch.tensor(run["pred"]) != y) & correct
    if budget is not None:
        wrong &= torch.tensor(run["norm"]) <= budget + 1e-6
    k = int(wrong.sum())
    return float((flagged & wrong).sum()) / k if k else None


# --------------------------------------------------------------------------- the section


def _defended_pair(ctx: AuditContext, spec: DefenseSpec) -> tuple[Classifier, Classifier, dict[str, Any]]:
    """(undefended, defended, record) from the section config or the audited model."""
    from bastion.defenses.saved import (
        base_model,
        defended_record,
        is_defended,
        make_defense,
        wrap_defended,
    )

    model = ctx.model
    if spec.checkpoint is not None:
        from bastion.models import load_classifier

        defended = load_classifier(spec.checkpoint, device=model.device)
        return base_model(defended), defended, defended_record(defended)[0]
    ref = spec.defense or spec.detector or spec.ensemble
    base = base_model(model)
    if ref is None:
        if not is_defended(model):
            raise ConfigError("defense section: give defense:, detector: or checkpoint:, or audit a defended "
                              "checkpoint (written by `bastion defend`)")
        return base, model, defended_record(model)[0]
    if spec.defense is not None:
        defended = make_defense(base, ref.name, ref.params, eot_samples=spec.eot_samples)
        return base, defended, defended_record(defended)[0]
    # a detector: calibrate (and train) once, cached as a step so a resumed audit reuses it
    key = (f"defense-build/{ref.name}/{json.dumps(ref.params, sort_keys=True, default=str)}/calib={spec.calib_n}/"
           f"fit={spec.fit_n}/seed={ctx.seed}")

    def build() -> dict[str, Any]:
        d = make_defense(base, ref.name, ref.params, ctx.train, calib_n=spec.calib_n, fit_n=spec.fit_n,
                         seed=ctx.seed)
        rec, tensors = defended_record(d)
        if tensors:
            ctx.save_tensors(key, tensors)
        return rec

    rec = ctx.step(key, build)
    tensors = ctx.load_tensors(key) or {}
    return base, wrap_defended(base, rec, tensors, "the audit's cached detector"), rec


@register_section("defense", validate=lambda cfg: _parse(cfg) and None)
def run_defense(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    spec = _parse(cfg)
    th = thresholds_of(ctx)
    name = spec.name or "defense"
    undefended, defended, record = _defended_pair(ctx, spec)
    tag = f"{record['kind']}:{record['name']}:{json.dumps(record.get('params', {}), sort_keys=True)}"
    if record["kind"] == "detector":
        tag += f":thr={record.get('threshold')}"
    res = evaluate_defense(undefended, defended, spec.attacks, ctx.test.x, ctx.test.y, seed=ctx.seed,
                           batch_size=ctx.batch_size, step=ctx.step, key=f"defense/{name}/{tag}",
                           adaptive=spec.adaptive, masking_drop=th.defense_masking_drop)
    out = SectionOutput(name=name, kind="defense")
    rows, clean = res["rows"], res["clean"]
    vr = undefended.spec.value_range
    worst_rows = []
    for (norm, eps), mask in sorted(res["robust"].items()):
        value, ci = _rate(mask)
        worst_rows.append({"norm": norm, "eps": eps, "robust_accuracy": value, "robust_ci": ci,
                           "attacks": sorted({r["attack"] for r in rows if (r["norm"], r["eps"]) == (norm, eps)})})
    out.summary = {"defense": record, "clean": clean, "n": clean["n"], "runs": rows, "worst_case": worst_rows,
                   "benign_floor": spec.benign_floor, "masking_drop": th.defense_masking_drop}
    cols = ["attack", "norm", "eps", "robust_undefended", "robust_defended", "adaptive_attack", "robust_adaptive",
            "asr_undefended", "asr_defended", "asr_adaptive", "asr_diff", "asr_diff_ci", "flags"]
    if record["kind"] in REJECTING:
        cols[8:8] = ["detection_rate", "detection_rate_adaptive"]
    why = masking_words(record["kind"])
    for r in rows:
        r["flags"] = (f"robust accuracy drops by {r['adaptive_drop']:.0%} under the adaptive attack: {why}"
                      if r["masking"] else "")
    out.tables.append(ReportTable(
        f"Undefended vs defended ({record['name']})", cols,
        [[_cell(r.get(c)) for c in cols] for r in rows],
        f"Clean accuracy: undefended {clean['undefended_accuracy']:.3f}, defended {clean['defended_accuracy']:.3f}"
        + ("" if clean["false_positive_rate"] is None else
           f", false-positive rate of the detector on clean inputs {clean['false_positive_rate']:.3f}")
        + f" (n = {clean['n']}). robust_*: share of all examples still classified correctly"
        + (" or flagged" if record["kind"] in REJECTING else "")
        + "; asr_*: share of the initially correct examples fooled"
        + (" and not flagged" if record["kind"] in REJECTING else "")
        + "; adaptive: the attack aimed at the defense (BPDA, EOT or detector-aware PGD), scored on the "
          "defended model; asr_diff: undefended ASR - defended ASR with its 95% interval."))
    out.tables.append(ReportTable(
        "Defended model, worst case over every attack", ["norm", "eps", "robust_accuracy", "robust_ci", "attacks"],
        [[r["norm"], r["eps"], r["robust_accuracy"], _cell(r["robust_ci"]), ", ".join(r["attacks"])]
         for r in worst_rows],
        "An example counts as robust only when no attack at that budget, plain or adaptive, fooled the "
        "defended model."))
    _score(out, th, spec, record, clean, rows, worst_rows, vr, name)
    return out


def masking_words(kind: str) -> str:
    """What a drop under the adaptive attack means for this kind of defense."""
    if kind in ENSEMBLE_KINDS:
        return "the ensemble is fooled by an attacker who attacks all of its members at once"
    return ("gradient masking" if kind == "preprocess" else
            "the detector is evaded by an attacker who knows it")


def _cell(v: Any) -> Any:
    if isinstance(v, list) and len(v) == 2 and all(isinstance(e, float) for e in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return v


def _score(out: SectionOutput, th: Any, spec: DefenseSpec, record: dict[str, Any], clean: dict[str, Any],
           rows: list[dict[str, Any]], worst_rows: list[dict[str, Any]], vr: float, name: str) -> None:
    dname = record["name"]
    out.threat_model = (
        "An attacker who controls the model's input at inference time and knows the deployed defense "
        f"({dname}) as well as the model: white-box attacks see the weights and adapt to the defense "
        "(BPDA through non-differentiable transforms, EOT over random ones, a joint loss against a "
        "detector); black-box attacks query the defended model's outputs only.")
    out.advice = (
        "Judge a defense by its robust accuracy under the adaptive attack, never under an attack that "
        "ignores it: input transformations and detectors that only break gradients give no robustness "
        "against an attacker who knows them (Athalye, Carlini & Wagner 2018; Carlini & Wagner 2017). "
        "Adversarial training (bastion train --defense pgd-at or trades; Madry et al. 2018, Zhang et al. "
        "2019) is the defense that holds up against adaptive attacks; keep a transformation only if its "
        "clean-accuracy cost is acceptable and the adaptive figures still justify it.")
    head = headline_budget([(r["norm"], r["eps"]) for r in worst_rows], th, vr)
    if head is not None:
        row = next(r for r in worst_rows if (r["norm"], r["eps"]) == head)
        value, ci = row["robust_accuracy"], tuple(row["robust_ci"])
        verdict = at_least(value, th.evasion_robust_accuracy, th.evasion_warn_band)
        words = describe_budget(head[0], head[1], vr)
        meaning = {
            PASS: f"With {dname}, {value:.0%} of inputs keep their label against every attack tried, adaptive "
                  f"ones included, at {words}.",
            WARN: f"Borderline: with {dname}, {1 - value:.0%} of inputs are misclassified under the strongest "
                  f"attack at {words}.",
            FAIL: f"With {dname}, an attacker who adapts to the defense within {words} still fools the model on "
                  f"{1 - value:.0%} of inputs: the defense does not make it robust at this budget.",
        }[verdict]
        out.scorecard.append(ScoreRow(
            threat="defense", metric=f"robust accuracy with {dname} (worst case, adaptive attacks included), "
                                     f"{NORM_WORDS[head[0]]} eps {head[1]:g}",
            value=value, verdict=verdict, meaning=meaning, ci=ci, threshold=th.evasion_robust_accuracy,
            section=name))
    drop = clean["undefended_accuracy"] - clean["defended_accuracy"]
    floor = spec.benign_floor
    verdict = FAIL if drop > floor + 1e-12 else WARN if drop > floor / 2 else PASS
    from bastion.metrics.stats import wilson_interval

    n = clean["n"]
    k = round(clean["defended_accuracy"] * n)
    out.scorecard.append(ScoreRow(
        threat="defense", metric=f"clean accuracy with {dname} (undefended {clean['undefended_accuracy']:.3f})",
        value=clean["defended_accuracy"], verdict=verdict, ci=wilson_interval(k, n) if n else None,
        threshold=clean["undefended_accuracy"] - floor, section=name,
        meaning={PASS: f"{dname} costs {max(drop, 0):.1%} of clean accuracy, within the benign floor of {floor:.0%}.",
                 WARN: f"{dname} costs {drop:.1%} of clean accuracy, more than half the benign floor of {floor:.0%}.",
                 FAIL: f"{dname} costs {drop:.1%} of clean accuracy, more than the benign floor of {floor:.0%}: "
                       "too aggressive to deploy as configured."}[verdict]))
    if verdict == FAIL:
        out.notes.append(f"{dname} lowers clean accuracy from {clean['undefended_accuracy']:.3f} to "
                         f"{clean['defended_accuracy']:.3f} (more than benign_floor {floor:g}); its robustness "
                         "figures describe a model users would not accept.")
    masked = [r for r in rows if r["robust_adaptive"] is not None]
    if masked:
        worst = max(masked, key=lambda r: r["adaptive_drop"])
        d = worst["adaptive_drop"]
        bad = d > th.defense_masking_drop
        out.scorecard.append(ScoreRow(
            threat="defense", metric=f"robust accuracy lost to the adaptive attack ({worst['adaptive_attack']}, "
                                     f"{NORM_WORDS[worst['norm']]} eps {worst['eps']:g})",
            value=d, verdict=WARN if bad else PASS, threshold=th.defense_masking_drop, higher_is_better=False,
            section=name, meaning=(
                f"{masking_words(record['kind']).capitalize()}: {dname} looks {d:.0%} more robust against {worst['attack']} than it is; the "
                "adaptive attack removes that margin, so figures from attacks that ignore the defense are "
                "misleading." if bad else
                f"The adaptive attack changes robust accuracy by at most {max(d, 0):.0%}: no sign of gradient "
                "masking.")))
        for r in masked:
            if r["masking"]:
                out.notes.append(
                    f"{r['attack']} at {r['norm']} eps {r['eps']:g}: robust accuracy of the defended model is "
                    f"{r['robust_defended']:.3f} under the plain attack but {r['robust_adaptive']:.3f} under "
                    f"{r['adaptive_attack']}: {masking_words(record['kind'])} (Athalye et al. 2018; "
                    "Carlini & Wagner 2017).")
    if clean["false_positive_rate"] is not None and record.get("fpr") is not None:
        fpr, ci = clean["false_positive_rate"], clean["false_positive_ci"]
        if ci and ci[0] > record["fpr"]:
            out.notes.append(f"The detector flags {fpr:.1%} of clean test inputs, above the {record['fpr']:.0%} it "
                             "was calibrated at on the training split: the threshold does not transfer.")
    if n < 100:
        out.notes.append(f"Only {n} examples: the 95% intervals are wide.")


__all__ = ["DefenseSpec", "evaluate_defense", "run_defense"]
