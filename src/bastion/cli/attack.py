"""`bastion attack` (run one evasion attack on a checkpoint, save the adversarial batch)
and `bastion attacks` (list every registered attack with its kind, norms and defaults)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    HEADERS,
    JSON_OPTION,
    MAX_EXAMPLES,
    QUIET_OPTION,
    ROOT_OPTION,
    SEED_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_float,
    check_input_path,
    check_int,
    check_out_file,
    console,
    emit,
    parse_kv,
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

if TYPE_CHECKING:  # the list commands start without importing torch
    from bastion.core import Classifier


@app.command("attacks")
def attacks_cmd(as_json: bool = JSON_OPTION) -> None:
    """List the evasion attacks: name, kind, norms, targeted, black-box and defaults."""
    from rich.table import Table

    from bastion.attacks import registry

    rows = [registry.describe(n) for n in registry.names()]
    # the defaults column wraps; the short columns never do (the shared `table` helper keeps
    # every column on one line, which squeezes the names out of sight here)
    t = Table(title="Bastion evasion attacks", header_style="bold", show_lines=True)
    for col in ("name", "kind", "norms", "targeted", "black box"):
        t.add_column(col, no_wrap=True)
    t.add_column("defaults", overflow="fold", ratio=1)
    for r in rows:
        t.add_row(r["name"], r["kind"], ",".join(r["norms"]), "yes" if r["targeted"] else "no",
                  "yes" if r["black_box"] else "no",
                  ", ".join(f"{k}={v}" for k, v in r["defaults"].items()))
    console.print(t)
    emit(rows, as_json)


def build_attack(name: str, norm: str | None, eps: float | None, extra: dict[str, Any]) -> Any:
    """Create attack `name` with the CLI's --norm/--eps and --arg values, or explain why not."""
    from bastion.attacks import registry
    from bastion.core import parse_norm

    cls = registry.get(name)
    field_names = {f.name for f in dataclasses.fields(cls)}
    params = dict(extra)
    if norm is not None:
        canon = parse_norm(norm)
        if canon not in cls.norms:
            raise ConfigError(f"attack {cls.name!r} supports norms {', '.join(cls.norms)}, not {norm!r}")
        if "norm" in field_names:
            params["norm"] = canon
    if eps is not None:
        if "eps" not in field_names:
            raise ConfigError(f"attack {cls.name!r} has no eps budget ({cls.kind}); drop --eps and "
                              "apply budgets to its norms afterwards")
        check_float(eps, "--eps", low=0.0)
        params["eps"] = eps
    return registry.create(cls.name, **params)


def save_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    """Write an .npz next to `path` under a temporary name, then rename it into place."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def certified_target(clf: Classifier, path: Path) -> tuple[Classifier, str]:
    """A certified (random) classifier is attacked and scored through EOT over its noise
    (`attack_surrogate`); a Gaussian-augmentation network as it is, with a pointer to its
    smoothed classifier."""
    from bastion.defenses.certify.defended import attack_surrogate, training_record

    target, line = attack_surrogate(clf)
    if line:
        console.print(f"note: attacking {line}", highlight=False, soft_wrap=True, markup=False)
    elif (training_record(clf) or {}).get("name") == "gaussian-aug":
        console.print(f"note: {path.name} was trained with Gaussian augmentation; this attacks the base network. "
                      f"Attack the smoothed classifier with `bastion defend --model {path.name} --defense smoothing "
                      "--out smoothed.st` first; `bastion certify` certifies it", highlight=False, soft_wrap=True,
                      markup=False)
    return target, line


@app.command("attack")
def attack_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    attack: str = typer.Option("pgd", "--attack", "-a", help="Attack name (see `bastion attacks`)."),
    data: str = typer.Option(None, "--data", "-d", help="Data set (default: the checkpoint's)."),
    norm: str = typer.Option(None, "--norm", help="linf, l2, l1 or l0 (attack's default if omitted)."),
    eps: float = typer.Option(None, "--eps", help="Budget for fixed-budget attacks."),
    targeted: str = typer.Option(None, "--targeted", help="Target mode: most, ll, next or random."),
    n: int = typer.Option(500, "--n", help="First N test examples."),
    correct_only: bool = typer.Option(False, "--correct-only",
                                      help="Use the first N correctly classified examples."),
    arg: list[str] = typer.Option(None, "--arg", help="Attack parameter key=value (repeatable)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write x, x_adv, y, pred_adv, success (.npz)."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Attack the first N test examples of a data set and report the metrics."""
    import torch

    from bastion.attacks.evasion.targets import TARGET_MODES, select_targets
    from bastion.core import seed_everything, unknown_name
    from bastion.data import load
    from bastion.defenses.detect import Detected, evaluate_detection
    from bastion.metrics.evasion import evasion_metrics
    from bastion.progress import task

    check_int(n, "--n", 1, MAX_EXAMPLES)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    if targeted is not None and targeted.lower() not in TARGET_MODES:
        raise unknown_name("target mode", targeted, TARGET_MODES)
    check_out_file(out, "--out", (".npz",))
    setup(quiet, wide, threads)
    atk = build_attack(attack, norm, eps, parse_kv(arg))
    if targeted is not None and not type(atk).supports_targeted:
        raise ConfigError(f"attack {type(atk).name!r} is untargeted only; drop --targeted")
    clf = load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg, device)
    clf, scored_as = certified_target(clf, model)
    data = data or clf.meta.get("dataset") or "mnist-5k"
    test = load(data, "test", root=root)
    seed_everything(seed)
    x, y = test.x, test.y
    if correct_only:
        idx = torch.nonzero(clf.predict(x).cpu() == y).flatten()[:n]
        x, y = x[idx], y[idx]
    else:
        x, y = x[:n], y[:n]
    target = None if targeted is None else select_targets(clf, x, y, targeted.lower(), seed=seed)
    thr = use_threads(clf, x, threads)
    with task(f"{type(atk).name} on {len(y)} examples", None):
        res = atk(clf, x, y, target)
    summary = {**res.summary(), **evasion_metrics(clf, res), "model": str(model), "data": data,
               "targeted_mode": targeted, "seed": seed, "device": str(clf.device)}
    if scored_as:
        summary["attacked_as"] = scored_as
    summary["params"] = res.params
    summary.update(thr)
    detection_rows: list[list[Any]] = []
    if isinstance(clf, Detected):
        # a flagged adversarial input is detected, a flagged clean input a false positive
        det = evaluate_detection(clf, x, res.x_adv, y, res.success)
        summary["detection"] = {"detector": clf.detector.name, **det.to_dict()}
        detection_rows = [[label, f"{r.value:.4f} [{r.low:.4f}, {r.high:.4f}]"] for label, r in (
            ("detection rate", det.detection_rate), ("false-positive rate", det.false_positive_rate),
            ("robust acc with reject", det.robust_accuracy_with_reject))]
    if out is not None:
        r = res.cpu()
        arrays = {"x": r.x.numpy(), "x_adv": r.x_adv.numpy(), "y": r.y.numpy(),
                  "pred_adv": r.pred_adv.numpy(), "success": r.success.numpy()}
        if r.target is not None:
            arrays["target"] = r.target.numpy()
        save_npz_atomic(out, arrays)
        summary["out"] = str(out)
    rows = [[HEADERS.get(k, k), summary.get(k)] for k in ("attack", "n", "clean_accuracy", "robust_accuracy", "asr", "clean_error",
                                          "mr", "mean_conf", "mean_l2", "mean_linf", "mean_l0",
                                          "ssim", "psnr", "queries_mean", "time_per_example_s")]
    rows += detection_rows
    console.print(table(f"{res.attack} on {model.name}", ["metric", "value"], rows))
    if out is not None:
        console.print(f"[green]wrote[/] {out}", highlight=False)
    emit(summary, as_json)
