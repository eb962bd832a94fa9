"""The `poisoning` audit section: how much a poison budget hurts a model trained like
the audited one.

    - kind: poisoning
      attack: badnets        # badnets | label-flip | clean-label
      fraction: 0.05         # share of the training set poisoned
      target: 0              # target class (label-flip: with source)
      source: null           # label-flip source class
      mode: null             # label-flip / BadNets mode (see bastion poison)
      trigger: pattern       # pixel | pattern | square
      trigger_size: 3
      eps: 0.3               # clean-label PGD budget (the audited model is the surrogate)
      epochs: null           # training epochs (default: the checkpoint's, else 3)
      n_train: null          # training examples used (null = all)

A copy of the audited architecture is re-initialised and trained on a poisoned copy of
the audit's training split with the checkpoint's recipe (one resumable step). The section
reports clean accuracy against the audited model's, the backdoor's attack success rate on
triggered test inputs of the other classes (or, for label flipping, the source-class
recall), and one scorecard row: the attack success rate (fail at 0.5 or more, warn at
0.2), or for label flipping the accuracy lost (fail at 0.05, warn at 0.02).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from bastion.audit.scorecard import FAIL, PASS, WARN, at_most
from bastion.audit.sections import (
    AuditContext,
    ReportTable,
    ScoreRow,
    SectionOutput,
    register_section,
)
from bastion.core import Classifier, ConfigError
from bastion.params import validated

ASR_FAIL, ASR_WARN = 0.5, 0.2
DROP_FAIL, DROP_WARN = 0.05, 0.02


class PoisoningSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "poisoning"
    name: str | None = None
    attack: str = "badnets"
    fraction: float = Field(0.05, ge=0, le=1)
    target: int | None = 0
    source: int | None = None
    mode: str | None = None
    trigger: str = "pattern"
    trigger_size: int = Field(3, ge=1, le=100_000, strict=True)
    eps: float = Field(0.3, ge=0, le=1)
    epochs: int | None = Field(None, ge=1, le=10_000, strict=True)
    n_train: int | None = Field(None, ge=10, le=10**8, strict=True)


def _settings(spec: PoisoningSpec) -> Any:
    from bastion.attacks.poisoning.run import PoisonSettings

    if spec.attack not in ("badnets", "label-flip", "clean-label"):
        raise ConfigError(f"invalid poisoning section: attack must be badnets, label-flip or clean-label, "
                          f"got {spec.attack!r}")
    return PoisonSettings(attack=spec.attack, fraction=spec.fraction, target=spec.target, source=spec.source,
                          mode=spec.mode, trigger_kind=spec.trigger, trigger_size=spec.trigger_size, eps=spec.eps)


def _parse(cfg: dict[str, Any]) -> PoisoningSpec:
    spec = validated(PoisoningSpec, cfg, "poisoning section")
    s = _settings(spec)
    s.trigger()   # a bad trigger kind fails here; its fit to the image is checked with the data
    if spec.attack == "label-flip" and (spec.mode or "source-target") == "source-target" and spec.source is None:
        raise ConfigError("invalid poisoning section: label-flip source-target needs source")
    return spec


def fresh_copy(clf: Classifier) -> Classifier:
    """The same architecture and input spec with re-initialised weights."""
    new = copy.deepcopy(clf)
    for m in new.module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]
    return new


def _train_poisoned(ctx: AuditContext, spec: PoisoningSpec) -> dict[str, Any]:
    from bastion.attacks.poisoning.run import apply_poison
    from bastion.metrics.poisoning import attack_success_rate, source_class_recall
    from bastion.training.fit import TrainConfig, fit

    s = _settings(spec)
    train = ctx.train.take(spec.n_train)
    s.validate(train)
    res = apply_poison(train, s, ctx.model if spec.attack == "clean-label" else None)
    recipe = ctx.model.meta.get("training") or {}
    cfg = TrainConfig(epochs=spec.epochs or int(recipe.get("epochs", 3)),
                      batch_size=int(recipe.get("batch_size", 64)), lr=float(recipe.get("lr", 1e-3)),
                      optimizer=str(recipe.get("optimizer", "adam")), seed=ctx.seed, progress=False)
    torch.manual_seed(ctx.seed)
    victim = fresh_copy(ctx.model)
    fit(victim, res.data, None, cfg)
    victim.eval()
    test = ctx.test
    out = {"n_train": len(train), "n_poisoned": res.record.n_poisoned, "epochs": cfg.epochs,
           "clean_accuracy_audited": ctx.model.accuracy(test.x, test.y),
           "clean_accuracy_poisoned": victim.accuracy(test.x, test.y), "record": res.record.to_dict()}
    if res.record.trigger is not None:
        out["attack_success_rate"] = attack_success_rate(victim, test.x, test.y, res.record.trigger,
                                                         res.record.target, s.mode or "all-to-one")
    if spec.attack == "label-flip" and spec.source is not None:
        out["source_recall_audited"] = source_class_recall(ctx.model, test.x, test.y, spec.source)
        out["source_recall_poisoned"] = source_class_recall(victim, test.x, test.y, spec.source)
    out["record"].pop("index", None)
    out["record"].pop("original_labels", None)
    out["record"].pop("new_labels", None)
    return out


@register_section("poisoning", validate=lambda cfg: _parse(cfg) and None)
def run_poisoning_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    spec = _parse(cfg)
    name = spec.name or "poisoning"
    key = f"poisoning/{name}/{json.dumps(spec.model_dump(), sort_keys=True)}/seed={ctx.seed}"
    r = ctx.step(key, lambda: _train_poisoned(ctx, spec))
    out = SectionOutput(name=name, kind="poisoning", summary={**r, "settings": spec.model_dump()})
    drop = r["clean_accuracy_audited"] - r["clean_accuracy_poisoned"]
    rows = [["clean accuracy (audited model)", r["clean_accuracy_audited"]],
            ["clean accuracy (trained on poisoned data)", r["clean_accuracy_poisoned"]],
            ["clean accuracy lost", drop]]
    if "attack_success_rate" in r:
        rows.append(["attack success rate", r["attack_success_rate"]])
    if "source_recall_poisoned" in r:
        rows += [["source-class recall (audited)", r["source_recall_audited"]],
                 ["source-class recall (poisoned)", r["source_recall_poisoned"]]]
    out.tables.append(ReportTable(f"{spec.attack} at p = {spec.fraction:g}", ["figure", "value"], rows,
                                  f"{r['n_poisoned']} of {r['n_train']} training examples poisoned; the model was "
                                  f"retrained {r['epochs']} epochs with the audited model's recipe."))
    out.threat_model = ("An attacker who can insert or relabel a share of the training data (a scraped or "
                        "crowd-sourced set, a compromised supplier) but not touch the training code.")
    out.advice = ("Vet and deduplicate training data; before release, scan the model (kind: backdoor) and the "
                  "training set (activation clustering, spectral signatures) and remove flagged examples.")
    if "attack_success_rate" in r:
        v = float(r["attack_success_rate"])
        verdict = at_most(v, ASR_FAIL, ASR_WARN)
        meaning = {PASS: f"Poisoning {spec.fraction:.0%} of the data plants no working backdoor ({v:.0%} success).",
                   WARN: f"A partial backdoor: {v:.0%} of triggered inputs reach the target.",
                   FAIL: f"Poisoning {spec.fraction:.0%} of the data plants a backdoor that works on {v:.0%} of "
                         "triggered inputs."}[verdict]
        out.scorecard.append(ScoreRow("poisoning", f"backdoor ASR, {spec.attack} p={spec.fraction:g}", v, verdict,
                                      meaning, threshold=ASR_FAIL, higher_is_better=False, section=name))
    else:
        verdict = at_most(drop, DROP_FAIL, DROP_WARN)
        out.scorecard.append(ScoreRow("poisoning", f"clean accuracy lost, {spec.attack} p={spec.fraction:g}", drop,
                                      verdict, f"Flipping {spec.fraction:.0%} of the labels costs {drop:.1%} clean "
                                      "accuracy.", threshold=DROP_FAIL, higher_is_better=False, section=name))
    return out
