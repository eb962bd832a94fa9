"""`bastion mia`: membership-inference audit of a checkpoint.

Ground truth: the checkpoint must have been trained (e.g. by `bastion train`) on the
`--members` split of `--data` (default: train) and never on `--nonmembers` (default:
test). Candidates are `--eval-size` of each. The attacker's data is explicit:
`--attacker-data pool` (shadow models train on random halves of all members and
non-members, candidates included: online LiRA's threat model) or `disjoint` (the
candidates are excluded from the attacker's data: Shokri's threat model).
"""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    MAX_EPOCHS,
    MAX_EXAMPLES,
    QUIET_OPTION,
    ROOT_OPTION,
    SEED_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_input_path,
    check_int,
    check_out_dir,
    console,
    emit,
    setup,
    table,
    use_threads,
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


@app.command("mia")
def mia_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Shadow models are built "
                               "like it (zoo name or entry point)."),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    data: str = typer.Option("mnist-5k", "--data", "-d", help="Data set the target was trained on."),
    attack: str = typer.Option("lira", "--attack", "-a",
                               help="lira | lira-offline | rmia | shokri | yeom | gap (comma-separated list ok)."),
    shadows: int = typer.Option(64, "--shadows", help="Shadow / reference models to train (cached)."),
    attacker_data: str = typer.Option("auto", "--attacker-data",
                                      help="pool (contains the candidates) | disjoint | auto."),
    cache: Path = typer.Option(None, "--cache", help="Shadow-model cache folder (resumable). "
                               "Default: <--out>/shadows; with neither --out nor --cache "
                               "nothing is cached."),
    eval_size: int = typer.Option(1000, "--eval-size", help="Members and non-members each among the candidates."),
    members: str = typer.Option("train", "--members", help="Split the target was trained on."),
    nonmembers: str = typer.Option("test", "--nonmembers", help="Split the target never saw."),
    augment: str = typer.Option("none", "--augment", help="Multi-query: none | flip | shift | flip+shift."),
    variance: str = typer.Option("auto", "--variance", help="LiRA variance: auto | per-example | global."),
    epochs: int = typer.Option(None, "--shadow-epochs", help="Override the target's recorded epochs."),
    method: str = typer.Option("auto", "--method", help="Shadow training: auto | loop | vmap | process."),
    engine: str = typer.Option("local", "--engine", help="local (this process) | ray (shadow training and "
                               "scoring as Ray tasks; needs the scale extra)."),
    address: str = typer.Option(None, "--address", help="With --engine ray: an existing Ray cluster "
                                "(host:port, ray://host:port or auto); default: a local one."),
    pool_size: int = typer.Option(None, "--pool-size", help="Cap the attacker's pool (random subset)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the JSON report (and roc.png) here."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Membership inference against a checkpoint: AUC, advantage, TPR at 0.1% / 1% FPR."""
    from bastion.attacks.privacy.membership import MIAConfig, audit_membership
    from bastion.attacks.privacy.membership.lira import VARIANCES
    from bastion.attacks.privacy.membership.runner import config_dict
    from bastion.audit.membership_section import MAX_SHADOWS, SHADOW_METHODS
    from bastion.cli.common import to_json
    from bastion.core import ConfigError, unknown_name
    from bastion.data import load

    check_int(shadows, "--shadows", 0, MAX_SHADOWS)
    check_int(eval_size, "--eval-size", 1, MAX_EXAMPLES)
    check_int(epochs, "--shadow-epochs", 1, MAX_EPOCHS)
    check_int(pool_size, "--pool-size", 4, 10_000_000)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    check_input_path(cache, "--cache")
    check_out_dir(out, "--out")
    setup(quiet, wide, threads)
    if method not in SHADOW_METHODS:
        raise unknown_name("shadow-training method", method, SHADOW_METHODS)
    if variance not in VARIANCES:
        raise unknown_name("LiRA variance", variance, VARIANCES)
    cluster = None
    if engine != "local" or address is not None:
        from bastion.scale.engine import check_engine, connect

        check_engine(engine, address)
        if method != "auto":
            raise ConfigError(f"--engine ray trains each Ray task's models itself (stacked with vmap, or "
                              f"one by one); drop --method {method}")
        method = "ray"
        cluster = connect(address)  # fails fast on a missing extra or an unreachable cluster
    cfg = MIAConfig(attacks=tuple(a.strip() for a in attack.split(",") if a.strip()), shadows=shadows,
                    attacker_data=attacker_data, eval_size=eval_size, augment=augment, lira_variance=variance,
                    shadow_epochs=epochs, method=method, pool_size=pool_size,
                    seed=seed)
    mode = cfg.resolve()  # all threat-model and count checks before any loading/training
    target = load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg, device)
    meta = target.meta
    if meta.get("dataset") not in (None, data):
        raise ConfigError(f"{model} was trained on {meta.get('dataset')!r}, not {data!r}: membership ground "
                          "truth is only known for the data set the target was trained on")
    if members == nonmembers:
        raise ConfigError("--members and --nonmembers must be different splits")
    mem, non = load(data, members, root=root), load(data, nonmembers, root=root)
    thr = use_threads(target, mem.x, threads)
    cache = cache if cache is not None else (out / "shadows" if out is not None else None)
    console.print(f"target {model} ({meta.get('arch') or meta.get('entry_point') or 'own module'}); {len(mem)} members ({members}), {len(non)} "
                  f"non-members ({nonmembers}); attacker data: {mode}", highlight=False)
    rep = audit_membership(target, mem, non, cfg, cache_dir=cache,
                           log=lambda s: console.print(s, highlight=False))
    from bastion.audit.config import Thresholds
    from bastion.audit.membership_section import FIGURES, not_estimable

    nonmembers = int((~rep.labels.bool()).sum())  # the non-members actually scored
    unsupported = not_estimable(rep.results, shadows, nonmembers, Thresholds().lira_min_shadows)
    rows = [[a] + [unsupported[a].get(c, r[c]) for c in FIGURES] for a, r in rep.results.items()]
    console.print(table("membership inference", ["attack", "AUC", "advantage", "bal. acc", "TPR@0.1%FPR",
                                                 "TPR@1%FPR"], rows))
    warnings = sorted({w for a in unsupported.values() for w in a.values()})
    for w in warnings:
        console.print(f"[yellow]warning:[/] some figures are {w}; they are left out of the table", highlight=False)
    report = {"checkpoint": str(model), "data": data, "config": config_dict(cfg), **rep.to_dict(), **thr,
              "engine": {"name": engine, **(cluster.to_dict() if cluster is not None else {})},
              "not_estimable": {a: sorted(v) for a, v in unsupported.items() if v}, "warnings": warnings}
    if out is not None:
        from bastion.audit.sections import fig_to_png
        from bastion.fileio import atomic_write

        atomic_write(out / "roc.png", fig_to_png(rep.figure()))
        atomic_write(out / "mia.json", to_json(report))  # last: its presence means a finished run
        console.print(f"[green]wrote[/] {out / 'mia.json'} and {out / 'roc.png'}", highlight=False)
    emit(report, as_json)

