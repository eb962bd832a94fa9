"""`bastion scan`: look for a backdoor in a model: Neural Cleanse (Wang et al. 2019),
activation clustering (Chen et al. 2018), spectral signatures (Tran et al. 2018) or
STRIP (Gao et al. 2019). Prints per-class anomaly figures and the suspected target;
Neural Cleanse writes the reversed trigger of every class as a PNG."""

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
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_float,
    check_input_path,
    check_int,
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
from bastion.errors import ConfigError

COLUMNS = {"neural-cleanse": ["class", "l1", "trigger_success", "anomaly", "flagged"],
           "activation-clustering": ["class", "n", "relative_size", "silhouette", "failure_ratio", "flagged"],
           "spectral": ["class", "n", "removed", "score_ratio", "anomaly"],
           "strip": ["class", "n", "mean_entropy", "flag_rate"]}


@app.command("scan")
def scan_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    data: str = typer.Option(None, "--data", "-d", help="Data set (default: the checkpoint's). Activation "
                             "clustering and spectral analyse its training split (e.g. a poisoned .npz)."),
    method: str = typer.Option("neural-cleanse", "--method",
                               help="neural-cleanse | activation-clustering | spectral | strip."),
    n_clean: int = typer.Option(300, "--n-clean", help="Clean test inputs for Neural Cleanse / STRIP."),
    epochs: int = typer.Option(20, "--epochs", help="Neural Cleanse: epochs of 10 mini-batches."),
    eps: float = typer.Option(0.1, "--eps", help="Spectral: assumed poisoned share of a class."),
    rounds: int = typer.Option(1, "--rounds", help="Spectral: removal steps, re-estimating the direction "
                               "after each (1 = the paper's one-shot removal)."),
    frr: float = typer.Option(0.01, "--frr", help="STRIP: false rejection rate on clean inputs."),
    n_train: int = typer.Option(None, "--n-train", help="Training inputs analysed (default: all)."),
    out_dir: Path = typer.Option(None, "--out-dir", help="Folder for the reversed trigger PNGs "
                                 "(default: scan-triggers next to the model)."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Scan a model for a backdoor and report the per-class anomaly and the suspected target."""
    from bastion.data import load
    from bastion.defenses.backdoor.scan import ScanSettings, run_scan
    from bastion.fileio import atomic_write

    check_int(n_clean, "--n-clean", 2, 1_000_000)
    check_int(epochs, "--epochs", 1, 100_000)
    check_int(n_train, "--n-train", 2, 10**8)
    check_float(eps, "--eps", low=0.0, high=1.0)
    check_int(rounds, "--rounds", 1, 10_000)
    check_float(frr, "--frr", low=0.0, high=1.0)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    check_input_path(out_dir, "--out-dir")
    s = ScanSettings(method=str(method).lower(), n_clean=n_clean, epochs=epochs, eps=eps, rounds=rounds, frr=frr,
                     n_train=n_train, seed=seed)
    s.validate()
    setup(quiet, wide, threads)
    clf = load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg, device)
    data = data or clf.meta.get("dataset")
    if data is None:
        raise ConfigError("no data set: pass --data")
    train, test = load(data, "train", root=root), load(data, "test", root=root)
    if tuple(test.input_shape) != clf.spec.shape:
        raise ConfigError(f"data {data!r} has inputs of shape {test.input_shape}, the model expects {clf.spec.shape}")
    thr = use_threads(clf, test.x[:64], threads)
    res = run_scan(clf, train, test, s)
    cols = COLUMNS[s.method]
    console.print(table(f"{s.method} scan of {Path(str(model)).name}", cols,
                        [[p.get(c) for c in cols] for p in res["per_class"]]))
    summary = res["summary"]
    sus = summary.get("suspected_target")
    console.print(f"suspected target: {sus if sus is not None else 'none'}", highlight=False)
    report = {"model": str(model), "data": data, "method": s.method, **summary, "per_class": res["per_class"],
              **thr, "seed": seed, "device": str(clf.device)}
    if res["pngs"]:
        folder = out_dir or Path(str(model)).with_name(Path(str(model)).stem + "-scan-triggers")
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for k, png in res["pngs"].items():
            p = folder / f"trigger-class-{k}.png"
            atomic_write(p, png)
            paths[str(k)] = str(p)
        report["trigger_images"] = paths
        console.print(f"[green]wrote[/] reversed triggers to {folder}", highlight=False)
    emit(report, as_json)
