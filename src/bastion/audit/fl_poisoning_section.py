"""The `fl-poisoning` audit section: how much m malicious clients hurt the audited
architecture trained by FedAvg, and how much a robust aggregator gives back.

    - kind: fl-poisoning
      clients: 10            # N clients, all sampled every round
      attackers: 3           # m malicious clients (a count or a fraction of N)
      attack: label-flip     # label-flip | backdoor | model-replacement | constrain-scale
      source: 7              # label flipping source -> target; target is also the backdoor's
      target: 1
      timing: always         # early | middle | late | always
      aggregator: median     # the robust rule compared with FedAvg
      rounds: 8
      train_size: 3000       # training examples split over the clients
      local_epochs: 1
      lr: 0.1

The architecture is re-initialised (seeded) and trained three times by FedAvg on the
audit's training data: without attackers, with them under FedAvg, with them under the
robust rule. Scorecard: the source-class recall lost (label flipping) or the backdoor
attack success rate (backdoor attacks) under the robust rule; pass <= 0.10, warn <= 0.20
(recall lost) or pass < 0.2, warn < 0.5 (ASR).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from typing import Any

import torch

from bastion.audit.scorecard import FAIL, PASS, WARN, at_most
from bastion.audit.sections import (
    AuditContext,
    ReportTable,
    ScoreRow,
    SectionOutput,
    register_section,
)
from bastion.core import ConfigError

DEFAULTS: dict[str, Any] = {"clients": 10, "attackers": 3, "attack": "label-flip", "source": 7, "target": 1,
                            "timing": "always", "aggregator": "median", "rounds": 8, "train_size": 3000,
                            "local_epochs": 1, "lr": 0.1, "poison_fraction": 1.0, "f": None}


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    unknown = set(cfg) - {"kind", "name", *DEFAULTS}
    if unknown:
        raise ConfigError(f"fl-poisoning section: unknown option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}


def _validate(cfg: dict[str, Any]) -> None:
    """Every constraint before any training (attackers vs clients, fractions, Krum/Bulyan)."""
    from bastion.federated import FedConfig
    from bastion.federated.malicious import AttackSchedule, select_attackers
    from bastion.federated.malicious_study import build_aggregator

    s = _settings(cfg)
    for k in ("clients", "rounds", "train_size", "local_epochs"):
        if isinstance(s[k], bool) or not isinstance(s[k], int) or s[k] < 1:
            raise ConfigError(f"fl-poisoning section: {k} must be a positive integer, got {s[k]!r}")
    FedConfig(num_clients=s["clients"], clients_per_round=s["clients"], rounds=s["rounds"],
              local_lr=float(s["lr"])).validate()
    m = len(select_attackers(s["clients"], s["attackers"]))
    AttackSchedule(s["rounds"], s["timing"])
    if s["aggregator"] == "fltrust":
        raise ConfigError("fl-poisoning section: fltrust needs a root data set; use it from `bastion fl-poison`")
    build_aggregator(_study(s, m, s["aggregator"]), s["clients"], m)


def _study(s: dict[str, Any], attackers: int | float, aggregator: str) -> Any:
    """The section's `StudyConfig` with `attackers` and `aggregator` (validates the attack)."""
    from bastion.federated.malicious import MaliciousConfig
    from bastion.federated.malicious_study import StudyConfig

    attack = MaliciousConfig(s["attack"], s["source"], s["target"], s["poison_fraction"])
    return StudyConfig(attackers=attackers, malicious=attack, timing=s["timing"], aggregator=aggregator, f=s["f"])


def _fresh(model: Any, seed: int) -> Any:
    clf = copy.deepcopy(model)
    torch.manual_seed(seed)
    for mod in clf.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    return clf


@register_section("fl-poisoning", validate=_validate)
def fl_poisoning_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.federated import FedConfig
    from bastion.federated.malicious_study import StudyConfig, poisoned_run

    _validate(cfg)
    s = _settings(cfg)
    name = cfg.get("name") or "fl-poisoning"
    train = ctx.train.take(s["train_size"])
    fed = FedConfig(num_clients=s["clients"], clients_per_round=s["clients"], rounds=s["rounds"],
                    local_epochs=s["local_epochs"], local_lr=float(s["lr"]), seed=ctx.seed, progress=False)
    studies = {"no attackers, FedAvg": _study(s, 0, "fedavg"),
               "attacked, FedAvg": _study(s, s["attackers"], "fedavg"),
               f"attacked, {s['aggregator']}": _study(s, s["attackers"], s["aggregator"])}

    def one(study: StudyConfig) -> dict[str, Any]:
        r = poisoned_run(_fresh(ctx.model, ctx.seed), train, ctx.test, fed, study)
        r.pop("model")
        return r

    def key(i: int, v: StudyConfig) -> str:
        blob = json.dumps([asdict(v), asdict(fed), s["train_size"]], sort_keys=True, default=str)
        return f"{name}-{i}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    runs = {k: ctx.step(key(i, v), lambda v=v: one(v))
            for i, (k, v) in enumerate(studies.items())}
    flip = s["attack"] == "label-flip"
    metric_key = "source_recall" if flip else "backdoor_asr"
    rows = []
    for k, r in runs.items():
        det = r.get("detection")
        rows.append([k, r["malicious"]["malicious_updates"], round(r["clean_accuracy"], 4), round(r[metric_key], 4),
                     f"{det['precision']:.2f} / {det['recall']:.2f}" if det else "-"])
    clean, fed_r, rob = (runs[k] for k in studies)
    m = len(fed_r["malicious"]["attackers"])
    summary = {"settings": s, "attackers": fed_r["malicious"]["attackers"],
               "runs": {k: {kk: r.get(kk) for kk in ("clean_accuracy", "source_recall", "source_to_target",
                                                     "backdoor_asr", "detection")} for k, r in runs.items()}}
    out = SectionOutput(name, "fl-poisoning", summary=summary, tables=[ReportTable(
        f"FedAvg of the audited architecture with {m} of {s['clients']} malicious clients ({s['attack']}, "
        f"timing {s['timing']})", ["run", "malicious updates", "clean accuracy",
                                  "source recall" if flip else "backdoor ASR", "detector P / R"], rows,
        caption="Each run re-initialises the architecture and trains it by FedAvg on the audit's training data.")])
    agg = s["aggregator"]
    if flip:
        lost_fed = clean["source_recall"] - fed_r["source_recall"]
        lost = clean["source_recall"] - rob["source_recall"]
        summary.update(recall_lost_fedavg=lost_fed, recall_lost_robust=lost)
        verdict = at_most(lost, 0.2, 0.1, inclusive=False)
        metric = f"source-class recall lost, {m}/{s['clients']} label-flipping clients, {agg}"
        value, thr = lost, 0.1
        meaning = {PASS: f"{agg} keeps class {s['source']}: {lost:.2f} recall lost (FedAvg loses {lost_fed:.2f}).",
                   WARN: f"{agg} gives back part: {lost:.2f} recall lost (FedAvg {lost_fed:.2f}).",
                   FAIL: f"{agg} does not protect class {s['source']}: {lost:.2f} recall lost "
                         f"(FedAvg {lost_fed:.2f})."}[verdict]
    else:
        asr = rob["backdoor_asr"]
        summary.update(asr_fedavg=fed_r["backdoor_asr"], asr_robust=asr)
        verdict = at_most(asr, 0.5, 0.2)
        metric = f"backdoor ASR, {m}/{s['clients']} {s['attack']} clients, {agg}"
        value, thr = asr, 0.2
        meaning = {PASS: f"{agg} keeps the backdoor out: ASR {asr:.2f} (FedAvg {fed_r['backdoor_asr']:.2f}).",
                   WARN: f"{agg} lets the backdoor partly in: ASR {asr:.2f} (FedAvg {fed_r['backdoor_asr']:.2f}).",
                   FAIL: f"{agg} lets the backdoor in: ASR {asr:.2f} (FedAvg {fed_r['backdoor_asr']:.2f})."}[verdict]
    out.scorecard.append(ScoreRow("poisoning", metric, float(value), verdict, meaning, threshold=thr,
                                  higher_is_better=False, section=name))
    out.threat_model = ("A fraction of the federated clients is malicious: they poison their own training data "
                        "(flipped labels or a backdoor trigger) and may scale their updates; the server sees "
                        "only the updates.")
    out.advice = ("Aggregate with a robust rule (median, trimmed mean, Krum, Bulyan, FLTrust) or the statistical "
                  "detector; clip update norms against boosted model-replacement updates "
                  "(`bastion fl-poison --aggregator ...` compares them).")
    return out
