"""`bastion leak`: gradient-leakage attacks (CPL, DLG, iDLG, Inverting Gradients) on the
gradients of a checkpoint, with optional gradient defenses."""

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
    check_input_path,
    check_int,
    check_out_dir,
    console,
    emit,
    parse_kv,
    setup,
    table,
    to_json,
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


@app.command("leak")
def leak_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Trained or untrained: "
                               "the leaked gradient is computed at its weights."),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    data: str = typer.Option(None, "--data", "-d", help="Data set of the private examples "
                             "(default: the checkpoint's)."),
    split: str = typer.Option("train", "--split", help="Split the private examples come from."),
    attack: str = typer.Option("cpl", "--attack", "-a", help="cpl | dlg | idlg | ig"),
    init: str = typer.Option(None, "--init", help="Dummy initialisation: patterned, random (N(0,1)), uniform, "
                             "dark, light, red, green, blue, optimal (default: the attack's)."),
    batch: int = typer.Option(1, "--batch", "-b", help="Examples behind each gradient (1..16)."),
    defense: str = typer.Option(None, "--defense", help="noise:SIGMA | prune:RATIO | quant:BITS | "
                                "clip:C,SIGMA"),
    n: int = typer.Option(8, "--n", help="Number of private examples to attack."),
    max_iter: int = typer.Option(None, "--max-iter", help="Attack iterations (default: the attack's)."),
    uniform_init: bool = typer.Option(False, "--uniform-init", help="Attack a copy re-initialised "
                                      "with U(-0.5, 0.5) weights (the DLG/CPL setting)."),
    arg: list[str] = typer.Option(None, "--arg", help="Attack parameter key=value (repeatable)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for leak.png and leak.json."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Reconstruct private examples from the gradients they produce on a model."""
    from bastion.attacks.privacy.leakage import make_config, uniform_init_
    from bastion.audit.leakage_section import (
        COLUMNS,
        attack_examples,
        check_leakage_params,
        grid_figure,
    )
    from bastion.core import ConfigError, seed_everything
    from bastion.data import load
    from bastion.defenses.gradient import parse_defense

    params = parse_kv(arg)
    check_int(n, "--n", 1, 1024)
    check_int(max_iter, "--max-iter", 1, 100_000)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    check_out_dir(out, "--out")
    setup(quiet, wide, threads)
    if not 1 <= batch <= 16:
        raise ConfigError(f"--batch must be in [1, 16], got {batch}")
    if n < batch:
        raise ConfigError(f"--n {n} is smaller than --batch {batch}")
    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test, got {split!r}")
    check_leakage_params(attack, params)
    cfg_probe = make_config(attack, init=init, max_iter=max_iter, **params)  # validate early
    if defense is not None:
        parse_defense(defense)
    clf = load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg, device)
    name = data or clf.meta.get("dataset")
    if not name:
        raise ConfigError("the model records no data set; pass --data")
    ds = load(name, split, root=root)
    other = load(name, "test" if split == "train" else "train", root=root)
    if tuple(ds.input_shape) != clf.spec.shape:
        raise ConfigError(f"data shape {ds.input_shape} does not match the model's {clf.spec.shape}")
    seed_everything(seed)
    if uniform_init:
        uniform_init_(clf, seed=seed)
    k = (min(n, len(ds)) // batch) * batch
    x, y = ds.x[:k], ds.y[:k]
    thr = use_threads(clf, x, threads, batch)
    row, rec = attack_examples(clf, x, y, attack, cfg_probe.init, defense or "none", batch,
                               cfg_probe.max_iter, seed, params, init_pool=(other.x[:500], other.y[:500]))
    cols = COLUMNS
    console.print(table(f"gradient leakage on {clf.name} ({name} {split}, batch {batch})", cols,
                        [[row.get(c) for c in cols]]))
    report = {"model": str(model), "data": name, "split": split, "batch": batch,
              "max_iter": cfg_probe.max_iter, "uniform_init": uniform_init, "seed": seed, **row,
              "config": make_config(attack, init=cfg_probe.init, max_iter=cfg_probe.max_iter,
                                    seed=seed, **params).to_dict(), **thr}
    if out is not None:
        from bastion.audit.sections import fig_to_png
        from bastion.fileio import atomic_write
        out.mkdir(parents=True, exist_ok=True)
        label = f"{attack} {cfg_probe.init}" + (f" {defense}" if defense else "")
        atomic_write(out / "leak.png", fig_to_png(grid_figure(x, [(label, rec)],
                                                              f"{attack}: originals vs reconstructions")))
        atomic_write(out / "leak.json", to_json(report))
        console.print(f"[green]wrote[/] {out / 'leak.png'}  {out / 'leak.json'}", highlight=False)
    emit(report, as_json)
