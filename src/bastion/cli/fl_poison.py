"""`bastion fl-poison`: a poisoned FedAvg study from flags.

m of N clients are malicious (label flipping, backdoor data, model replacement or
constrain-and-scale) in the rounds their timing picks; the server aggregates with the
chosen rule. Prints clean accuracy, source-class recall (label flipping) or backdoor
attack success rate, and the statistical detector's precision/recall; `--baseline` adds
the same run without attackers under FedAvg for reference.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    QUIET_OPTION,
    ROOT_OPTION,
    SEED_OPTION,
    check_common,
    check_int,
    console,
    emit,
    setup,
    table,
)
from bastion.cli.model_options import (
    BOUNDS_OPTION,
    INPUT_SHAPE_OPTION,
    MEAN_OPTION,
    MODEL_ARG_OPTION,
    MODEL_HELP,
    NUM_CLASSES_OPTION,
    STD_OPTION,
    WEIGHTS_OPTION,
    load_model_from_options,
)


def _attackers(text: str) -> int | float:
    from bastion.errors import ConfigError

    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"--attackers must be a count (e.g. 2) or a fraction in [0, 1) (e.g. 0.1), got {text!r}") from None
    return int(v) if v.is_integer() else v


@app.command("fl-poison")
def fl_poison_cmd(
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Its weights are the initial "
                               "global model; default: a fresh --arch."),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    arch: str = typer.Option("mlp", "--arch", help="Zoo architecture built fresh when no --model is given."),
    data: str = typer.Option("mnist-5k", "--data", "-d", help="Data set (train split over the clients)."),
    train_size: int = typer.Option(None, "--train-size", help="Use only the first N training examples."),
    clients: int = typer.Option(10, "--clients", help="Clients N."),
    per_round: int = typer.Option(None, "--per-round", help="Clients sampled per round (default: all)."),
    rounds: int = typer.Option(10, "--rounds", help="Federated rounds."),
    local_epochs: int = typer.Option(1, "--local-epochs", help="Local epochs per round."),
    lr: float = typer.Option(0.1, "--lr", help="Local SGD learning rate."),
    batch_size: int = typer.Option(32, "--batch-size", help="Local batch size."),
    attackers: str = typer.Option("1", "--attackers", help="Malicious clients: a count or a fraction of --clients."),
    attack: str = typer.Option("label-flip", "--attack", help="label-flip | backdoor | model-replacement | "
                               "constrain-scale."),
    source: int = typer.Option(7, "--source", help="Label flipping: source class."),
    target: int = typer.Option(1, "--target", help="Label flipping / backdoor target class."),
    poison_fraction: float = typer.Option(1.0, "--poison-fraction", help="Fraction of an attacker's eligible "
                                          "examples poisoned, in [0, 1]."),
    boost: float = typer.Option(None, "--boost", help="Model-replacement scale (default: clients per round)."),
    norm_bound: float = typer.Option(None, "--norm-bound", help="Constrain-and-scale radius (default: the "
                                     "median honest norm)."),
    timing: str = typer.Option("always", "--timing", help="early | middle | late | always."),
    participation: float = typer.Option(1.0, "--participation", help="Chance an attacker acts in a round of "
                                        "its window, in [0, 1]."),
    aggregator: str = typer.Option("fedavg", "--aggregator", help="fedavg | mean | median | trimmed-mean | krum | "
                                   "multi-krum | bulyan | norm-clip | fltrust | detector."),
    f: int = typer.Option(None, "--f", help="Krum / Bulyan f (default: the attacker count)."),
    beta: float = typer.Option(0.1, "--beta", help="Trimmed-mean fraction per end."),
    clip_bound: float = typer.Option(None, "--clip-bound", help="Norm clipping bound (default: median norm)."),
    clip_noise: float = typer.Option(0.0, "--clip-noise", help="Norm clipping: Gaussian noise std (weak DP)."),
    threshold: float = typer.Option(3.5, "--threshold", help="Statistical detector robust-z cut-off."),
    root_size: int = typer.Option(100, "--root-size", help="FLTrust: server root examples."),
    baseline: bool = typer.Option(False, "--baseline", help="Also run without attackers under FedAvg."),
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    root: Path = ROOT_OPTION,
    quiet: bool = QUIET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Simulate FedAvg with malicious clients and a (robust) aggregator."""
    setup(quiet=quiet)
    check_common(seed, device, root)
    for v, flag in ((clients, "--clients"), (rounds, "--rounds"), (local_epochs, "--local-epochs"),
                    (batch_size, "--batch-size"), (per_round, "--per-round"), (train_size, "--train-size")):
        check_int(v, flag)
    import torch

    from bastion.core import resolve_device
    from bastion.data import load
    from bastion.federated import FedConfig
    from bastion.federated.malicious import AttackSchedule, MaliciousConfig, select_attackers
    from bastion.federated.malicious_study import StudyConfig, build_aggregator, poisoned_run
    from bastion.models import build_classifier

    n_att = _attackers(attackers)
    fed = FedConfig(num_clients=clients, clients_per_round=per_round or clients, rounds=rounds,
                    local_epochs=local_epochs, local_lr=lr, local_batch_size=batch_size, seed=seed,
                    progress=None if not quiet else False)
    fed.validate()
    # every constraint before any training: the attack's fractions and classes, attackers vs
    # clients, timing, Krum/Bulyan's n vs f
    malicious = MaliciousConfig(attack, source, target, poison_fraction, boost, norm_bound)
    study = StudyConfig(attackers=n_att, malicious=malicious, timing=timing, participation=participation,
                        aggregator=aggregator, f=f, beta=beta, clip_bound=clip_bound, clip_noise=clip_noise,
                        detector_threshold=threshold, root_size=root_size)
    m = len(select_attackers(clients, n_att, seed))
    AttackSchedule(rounds, timing, participation)
    if aggregator != "fltrust":
        build_aggregator(study, fed.clients_per_round, m)
    train = load(data, "train", root=root).take(train_size)
    test = load(data, "test", root=root)

    def fresh():
        if model is not None:
            return load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg,
                                           device)
        torch.manual_seed(seed)
        return build_classifier(arch, train.input_spec(), train.num_classes, {}, device=resolve_device(device))

    res = poisoned_run(fresh(), train, test, fed, study)
    res.pop("model")
    out = {"attacked": res}
    if baseline:
        base = poisoned_run(fresh(), train, test, fed, study.without_attackers())
        base.pop("model")
        out["baseline"] = base
    rows = []
    for name, r in out.items():
        metric = (f"{r['source_recall']:.3f}" if "source_recall" in r else f"{r['backdoor_asr']:.3f}")
        det = r.get("detection")
        rows.append([name, r["config"]["aggregator"], r["malicious"]["malicious_updates"],
                     f"{r['clean_accuracy']:.3f}", metric,
                     f"{det['precision']:.2f} / {det['recall']:.2f}" if det else "-"])
    label = "source recall" if attack == "label-flip" else "backdoor ASR"
    console.print(table(f"poisoned FedAvg: {m} of {clients} clients, {attack}, timing {timing}",
                        ["run", "aggregator", "malicious updates", "clean acc", label, "detector P / R"], rows))
    emit({"clients": clients, "attackers": m, "attack": attack, "timing": timing, "aggregator": aggregator,
          "clean_accuracy": res["clean_accuracy"], "source_recall": res.get("source_recall"),
          "backdoor_asr": res.get("backdoor_asr"), "detection": res.get("detection"), "runs": out}, as_json)
