"""The `fl-privacy` audit section: what the audited model's federated clients leak at the
three leakage points, without and with federated differential privacy.

    - kind: fl-privacy
      privacy: {kind: cdp, clip: 4.0, sigma: 1.0, variant: dyn-s-sigma}   # none | sdp | cdp
      federated: {num_clients: 20, clients_per_round: 5, rounds: 2, local_batch_size: 2}
      train_size: 200          # training examples split over the clients
      leakage: {attack: cpl, types: [0, 1, 2], attacks: 2, max_iter: 30}

Two federated studies start from the audited model's weights on the audit's training data
(`bastion fl`'s study runner): plain FedAvg and FedAvg under the configured privacy
(Fed-SDP, client level, McMahan et al. 2018; or Fed-CDP, instance level, with the
dynamic clipping and noise schedules). The reconstruction attack (CPL or DLG) runs on
round-0 payloads at type 0 (the server's aggregate), type 1 (a client's upload) and
type 2 (a per-example gradient inside local training). Scorecard: the private run's worst
attack success rate over the three points, fail above 0.5, warn above 0.1, with the
privacy budget beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from bastion.audit.scorecard import FAIL, PASS, WARN, at_most
from bastion.audit.sections import (
    AuditContext,
    ReportTable,
    ScoreRow,
    SectionOutput,
    register_section,
)
from bastion.core import ConfigError

DEFAULT_FEDERATED = {"num_clients": 20, "clients_per_round": 5, "rounds": 2, "local_batch_size": 2,
                     "local_lr": 0.1}
DEFAULT_LEAKAGE = {"enabled": True, "attack": "cpl", "types": [0, 1, 2], "attacks": 2, "max_iter": 30}
KEYS = ("kind", "name", "privacy", "federated", "train_size", "leakage")
FAIL_ABOVE, WARN_ABOVE = 0.5, 0.1


def _study(cfg: dict[str, Any], seed: int, private: bool) -> Any:
    from bastion.cli.fl import FLStudyConfig
    from bastion.params import validated

    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ConfigError(f"fl-privacy section: unknown option(s) {unknown}; valid: {list(KEYS[1:])}")
    privacy = dict(cfg.get("privacy") or {"kind": "cdp"}) if private else {"kind": "none"}
    raw = {"seed": seed, "federated": {**DEFAULT_FEDERATED, **(cfg.get("federated") or {})},
           "privacy": privacy, "leakage": {**DEFAULT_LEAKAGE, **(cfg.get("leakage") or {}), "enabled": True}}
    study = validated(FLStudyConfig, raw, "fl-privacy section")
    if study.privacy.kind == "none" and private:
        raise ConfigError("fl-privacy section: privacy.kind must be sdp or cdp (the plain run is always included)")
    return study


def _validate(cfg: dict[str, Any]) -> None:
    from bastion.federated import FedConfig

    n = cfg.get("train_size", 200)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"fl-privacy section: train_size must be a positive integer, got {n!r}")
    study = _study(cfg, 0, True)
    FedConfig(**study.federated.model_dump()).validate(n)
    p = study.privacy
    if p.clip is not None and p.clip <= 0:
        raise ConfigError(f"fl-privacy section: privacy.clip (S) must be > 0, got {p.clip}")
    if p.sigma is not None and p.sigma < 0:
        raise ConfigError(f"fl-privacy section: privacy.sigma must be >= 0, got {p.sigma}")


@register_section("fl-privacy", validate=_validate)
def fl_privacy_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.cli.fl import run_fl_study

    _validate(cfg)
    name = cfg.get("name") or "fl-privacy"
    train = ctx.train.take(int(cfg.get("train_size", 200)))
    studies = {"plain": _study(cfg, ctx.seed, False), "private": _study(cfg, ctx.seed, True)}
    runs: dict[str, dict[str, Any]] = {}
    for which, study in studies.items():
        blob = json.dumps([study.model_dump(), len(train)], sort_keys=True, default=str)
        key = f"{name}-{which}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

        def work(study: Any = study) -> dict[str, Any]:
            rep = run_fl_study(study, device=str(ctx.model.device), model=ctx.model, train=train, test=ctx.test)
            p = rep["privacy"]
            eps = p.get("epsilon")
            privacy = {"mechanism": p.get("mechanism"), "level": p.get("level"), "delta": p.get("delta"),
                       "epsilon": eps if isinstance(eps, (int, float)) and math.isfinite(eps) else None}
            return {"test_accuracy": rep["test_accuracy"], "privacy": privacy, "leakage": rep["leakage"]}

        runs[which] = ctx.step(key, work)
    kind = studies["private"].privacy.kind
    label = {"sdp": "Fed-SDP (client level)", "cdp": "Fed-CDP (instance level)"}[kind]
    types = sorted(runs["plain"]["leakage"], key=int)
    rows = []
    for run_name, r in (("FedAvg", runs["plain"]), (label, runs["private"])):
        eps = r["privacy"].get("epsilon")
        rows.append([run_name, *[r["leakage"][t]["asr"] for t in types], r["test_accuracy"],
                     "-" if r["privacy"].get("mechanism") is None else ("inf" if eps is None else eps)])
    worst = max((runs["private"]["leakage"][t]["asr"] or 0.0) for t in types)
    worst_plain = max((runs["plain"]["leakage"][t]["asr"] or 0.0) for t in types)
    summary = {"runs": runs, "worst_asr_private": worst, "worst_asr_plain": worst_plain, "privacy_kind": kind}
    out = SectionOutput(name, "fl-privacy", summary=summary, tables=[ReportTable(
        f"Reconstruction success at the federated leakage points, FedAvg and {label}",
        ["run", *[f"type-{t} ASR" for t in types], "test accuracy", "epsilon"], rows,
        caption="Round-0 payloads attacked; type 0: the server's aggregate, type 1: a client's upload, "
                "type 2: a per-example gradient inside local training. Epsilon: the study's accountant "
                "(client level for Fed-SDP, per example for Fed-CDP).")])
    verdict = at_most(worst, FAIL_ABOVE, WARN_ABOVE, inclusive=False)
    meaning = {PASS: f"{label} stops the reconstruction at every leakage point (worst ASR {worst:.2f}, "
                     f"FedAvg {worst_plain:.2f}).",
               WARN: f"{label} leaves some inputs reconstructable (worst ASR {worst:.2f}, FedAvg {worst_plain:.2f}).",
               FAIL: f"{label} does not stop the reconstruction at some leakage point (worst ASR {worst:.2f}, "
                     f"FedAvg {worst_plain:.2f})."}[verdict]
    out.scorecard.append(ScoreRow("leakage", f"federated reconstruction success, worst of types "
                                  f"{'/'.join(types)}, {label}", float(worst), verdict, meaning,
                                  threshold=WARN_ABOVE, higher_is_better=False, section=name))
    out.threat_model = ("An honest-but-curious server (type 0 and 1) or an observer inside a client's "
                        "training (type 2) sees the shared gradients or updates and reconstructs the "
                        "training inputs behind them (Zhu et al. 2019; Wei et al. 2020).")
    out.advice = ("Fed-SDP noise added at the server leaves uploads and per-example gradients exposed; "
                  "Fed-CDP (per-example clipping and noise in every client) protects all three points. "
                  "`bastion fl --config` runs the same study with other settings.")
    return out
