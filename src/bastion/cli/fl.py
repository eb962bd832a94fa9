"""`bastion fl`: a federated study from a YAML config, in-process (`--engine local`) or on
Flower's simulation engine (`--engine flower`), with optional Fed-SDP / Fed-CDP and
gradient-leakage attacks at the type-0/1/2 points.

The study config (see configs/fl-example.yaml):

    model: {arch: mlp, args: {hidden: [64]}}    # or {path: my.pt} (a checkpoint / entry point)
    data: {name: mnist-5k, train_size: 1000, test_size: 500}
    federated: {num_clients: 20, clients_per_round: 5, rounds: 3, local_batch_size: 20, ...}
    aggregator: {name: fedavg, args: {}}         # any name of bastion.federated.AGGREGATORS
    privacy: {kind: none | sdp | cdp, ...}      # FedSDPConfig / FedCDPConfig fields
    leakage: {enabled: true, types: [0, 1, 2], attacks: 2, max_iter: 30}
    flower: {num_cpus: null, client_cpus: 1}
    seed: 0
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    QUIET_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_input_path,
    console,
    emit,
    setup,
    table,
)

ENGINES = ("local", "flower")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    arch: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    weights: str | None = None


class DataSection(_Strict):
    name: str = "mnist-5k"
    train_size: int | None = Field(default=None, ge=1)
    test_size: int | None = Field(default=None, ge=1)


class FederatedSection(_Strict):
    num_clients: int = 10
    clients_per_round: int = 10
    rounds: int = 3
    local_epochs: int = 1
    local_steps: int | None = None
    local_batch_size: int = 32
    local_lr: float = 0.1
    partition: str = "iid"
    alpha: float = 0.5
    eval_every: int = 1
    vectorize: bool = False
    vectorize_group: int | None = Field(default=None, ge=1)


class AggregatorSection(_Strict):
    name: str = "fedavg"
    args: dict[str, Any] = Field(default_factory=dict)


class PrivacySection(_Strict):
    kind: Literal["none", "sdp", "cdp"] = "none"
    clip: float | None = None
    sigma: float | None = None
    delta: float = 1e-5
    noise: str = "server"
    variant: str = "baseline"
    decay: str = "linear"
    sigma_decay: str | None = None
    clip_final: float | None = None
    sigma_final: float | None = None
    per_layer: bool = False
    engine: str = "auto"
    poisson: bool = True
    noise_seed: int | None = None


class LeakageSection(_Strict):
    enabled: bool = False
    attack: Literal["cpl", "dlg"] = "cpl"
    types: list[int] = Field(default_factory=lambda: [0, 1, 2])
    rounds: list[int] = Field(default_factory=lambda: [0])
    attacks: int = Field(default=2, ge=1, le=64)
    max_iter: int = Field(default=30, ge=1, le=100_000)


class FlowerSection(_Strict):
    num_cpus: int | None = Field(default=None, ge=1)
    client_cpus: float = Field(default=1.0, gt=0)


class FLStudyConfig(_Strict):
    """A federated study (every section optional; defaults documented per field)."""

    model: ModelSection = Field(default_factory=lambda: ModelSection(arch="mlp"))
    data: DataSection = Field(default_factory=DataSection)
    federated: FederatedSection = Field(default_factory=FederatedSection)
    aggregator: AggregatorSection = Field(default_factory=AggregatorSection)
    privacy: PrivacySection = Field(default_factory=PrivacySection)
    leakage: LeakageSection = Field(default_factory=LeakageSection)
    flower: FlowerSection = Field(default_factory=FlowerSection)
    seed: int = 0


def load_study(path: Path) -> FLStudyConfig:
    from bastion.params import validated
    from bastion.safe_yaml import load_yaml_file

    raw = load_yaml_file(path, "fl config") or {}
    return validated(FLStudyConfig, raw, "fl config")


def _privacy(cfg: FLStudyConfig, fed: Any) -> tuple[dict[str, Any], Any]:
    from bastion.federated.dp import FedCDP, FedCDPConfig, FedSDP, FedSDPConfig

    p = cfg.privacy
    if p.kind == "sdp":
        sdp = FedSDP(FedSDPConfig(clip=1.0 if p.clip is None else p.clip,
                                  sigma=1.0 if p.sigma is None else p.sigma, delta=p.delta,
                                  noise=p.noise, noise_seed=p.noise_seed), fed)
        return {"aggregator": sdp, "update_transforms": [sdp.clip_update]}, sdp
    if p.kind == "cdp":
        cdp = FedCDP(FedCDPConfig(clip=4.0 if p.clip is None else p.clip,
                                  sigma=1.0 if p.sigma is None else p.sigma, delta=p.delta,
                                  variant=p.variant, decay=p.decay, sigma_decay=p.sigma_decay,
                                  clip_final=p.clip_final, sigma_final=p.sigma_final,
                                  per_layer=p.per_layer, engine=p.engine, poisson=p.poisson,
                                  noise_seed=p.noise_seed), fed)
        return {"local_trainer": cdp}, cdp
    return {}, None


def _model(cfg: FLStudyConfig, spec: Any, num_classes: int, device: str) -> Any:
    from bastion.core import ConfigError
    from bastion.models import ModelSource, build_classifier, load_model

    m = cfg.model
    if (m.arch is None) == (m.path is None):
        raise ConfigError("fl config model: give exactly one of arch (a zoo name) or path "
                          "(a checkpoint or module:function entry point)")
    if m.path is not None:
        return load_model(ModelSource(model=m.path, weights=Path(m.weights) if m.weights else None,
                                      kwargs=m.args), device=device)
    import torch
    torch.manual_seed(cfg.seed)
    return build_classifier(m.arch, spec, num_classes, m.args, device=device)  # type: ignore[arg-type]


def _attack(clf: Any, events: list[Any], t: int, leak: LeakageSection) -> dict[str, Any]:
    from bastion.attacks.privacy.leakage import make_config
    from bastion.attacks.privacy.leakage.cpl import cpl_attack
    from bastion.attacks.privacy.leakage.dlg import dlg_attack

    fn = cpl_attack if leak.attack == "cpl" else dlg_attack
    rows = []
    for i, ev in enumerate(events[: leak.attacks]):
        b = 1 if t == 2 else int(ev.victim_x.shape[0])
        if b > 16:
            continue
        res = fn(clf, ev.payload, make_config(leak.attack, max_iter=leak.max_iter, batch_size=b,
                                              seed=i), reference=ev.victim_x,
                 reference_labels=ev.victim_y)
        rows.append({"round": ev.round, "client": ev.client, "batch": b,
                     "asr": float(res.success.float().mean()), "nmse": float(res.nmse.mean())})
    asr = [r["asr"] for r in rows]
    return {"payloads": len(rows), "asr": sum(asr) / len(asr) if asr else None, "attacks": rows}


def run_fl_study(cfg: FLStudyConfig, engine: str = "local", device: str = "cpu",
                 root: Path | None = None, *, model: Any = None, train: Any = None,
                 test: Any = None) -> dict[str, Any]:
    """Run the study on `engine`; returns the JSON report (history, final accuracy, privacy,
    leakage, a digest of the final global weights). `model`, `train` and `test` (a
    Classifier and Datasets, e.g. an audit's) replace the config's model and data."""
    from bastion.core import ConfigError
    from bastion.data import load
    from bastion.federated import FedConfig, PayloadCollector, get_aggregator, run_fedavg

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    f = cfg.federated
    fed = FedConfig(**f.model_dump(), seed=cfg.seed, progress=False)
    fed.validate()
    if engine == "flower":
        from bastion.federated.flower import require_flower
        require_flower()
    agg = get_aggregator(cfg.aggregator.name, **cfg.aggregator.args)
    kw, accountant = _privacy(cfg, fed)
    if "aggregator" in kw and cfg.aggregator.name != "fedavg":
        raise ConfigError("Fed-SDP brings its own noisy aggregation; leave aggregator at fedavg")
    kw.setdefault("aggregator", agg)
    train = load(cfg.data.name, "train", root=root) if train is None else train
    test = load(cfg.data.name, "test", root=root) if test is None else test
    if cfg.data.train_size:
        train = train.take(min(cfg.data.train_size, len(train)))
    if cfg.data.test_size:
        test = test.take(min(cfg.data.test_size, len(test)))
    fed.validate(len(train))
    clf = _model(cfg, _spec(train), train.num_classes, device) if model is None else model
    hooks = []
    col = None
    if cfg.leakage.enabled:
        col = PayloadCollector(types=cfg.leakage.types, rounds=cfg.leakage.rounds, steps=(0,),
                               limit=cfg.leakage.attacks)
        hooks.append(col)
    if engine == "flower":
        from bastion.federated.flower import run_flower
        res = run_flower(clf, train, test, fed, hooks=hooks, num_cpus=cfg.flower.num_cpus,
                         client_cpus=cfg.flower.client_cpus, **kw)
    else:
        res = run_fedavg(clf, train, test, fed, hooks=hooks, **kw)
    report: dict[str, Any] = {
        "engine": engine, "model": cfg.model.path or cfg.model.arch, "data": cfg.data.name,
        "federated": cfg.federated.model_dump(), "aggregator": cfg.aggregator.name,
        "seed": cfg.seed, "history": res.history, "test_accuracy": res.test_accuracy,
        "wall_time_s": res.wall_time,
        "weights_digest": {"l2": math.sqrt(sum(float(v.double().pow(2).sum())
                                               for v in res.weights.values())),
                           "sum": sum(float(v.double().sum()) for v in res.weights.values())},
        "privacy": accountant.privacy() if accountant is not None else {"mechanism": "none"},
    }
    if engine == "flower":
        report["flwr"] = res.config.get("flwr")
    if col is not None:
        report["leakage"] = {str(t): _attack(clf, col.events[t], t, cfg.leakage)
                             for t in cfg.leakage.types}
    return report


def _spec(ds: Any) -> Any:
    from bastion.core import InputSpec
    return InputSpec(tuple(ds.input_shape))


@app.command("fl")
def fl_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Study config (YAML); see "
                                "configs/fl-example.yaml."),
    engine: str = typer.Option("local", "--engine", "-e", help="local (in-process) | flower "
                               "(Flower simulation on Ray; pip install 'bastion[scale]')"),
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Run a federated study (FedAvg / robust aggregation, Fed-SDP or Fed-CDP, leakage taps)."""
    from bastion.core import ConfigError

    check_common(None, device, None)
    check_input_path(config, "--config")
    if engine not in ENGINES:
        raise ConfigError(f"unknown --engine {engine!r}; valid: {', '.join(ENGINES)}")
    cfg = load_study(config)
    setup(quiet or as_json, wide, threads)
    rep = run_fl_study(cfg, engine, "cpu" if device == "auto" else device)
    rows = [[h["round"], len(h["clients"]), h["local_loss"], h.get("test_accuracy")]
            for h in rep["history"]]
    if not as_json:
        console.print(table(f"federated study on {engine} ({rep['model']}, {rep['data']})",
                            ["round", "clients", "local loss", "test_accuracy"], rows))
        priv = rep["privacy"]
        if priv.get("mechanism") != "none":
            console.print(f"{priv['mechanism']}: epsilon {priv['epsilon']:.3g} at delta "
                          f"{priv['delta']:g}", highlight=False)
        for t, v in rep.get("leakage", {}).items():
            console.print(f"type-{t} leakage: {v['payloads']} payloads, ASR {v['asr']}",
                          highlight=False)
    emit(rep, as_json)
