"""`bastion defend`: wrap a model in an input transformation or a calibrated detector and
save the defended model as a checkpoint every other command loads as the defended model."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    MAX_EXAMPLES,
    QUIET_OPTION,
    ROOT_OPTION,
    SEED_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
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


@app.command("defend")
def defend_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    defense: str = typer.Option(..., "--defense", help="A transformation (bit-depth, median, mean, gaussian-blur, "
                                "rotation, nlm, jpeg, gaussian-noise, tv, chain) or a detector "
                                "(feature-squeezing, binary, l1), or a diversity ensemble from a pool (ensemble, xensemble: "
                                "--params pool=DIR n=3 policy=best-kappa threshold=0.34), or a certified "
                                "classifier (smoothing: --params sigma=0.25; pixeldp for a PixelDP-trained model)."),
    params: list[str] = typer.Option(None, "--params", "--param",
                                     help="Defense parameter key=value (repeatable), e.g. kernel=3 (k=3), "
                                          "bits=1, quality=75, fpr=0.05."),
    out: Path = typer.Option(..., "--out", "-o", help="Defended checkpoint to write (.st)."),
    data: str = typer.Option(None, "--data", "-d", help="Data set (default: the checkpoint's)."),
    calib_n: int = typer.Option(1000, "--calib-n", help="Detectors: benign training inputs the threshold is "
                                "calibrated on (the last N of the training split)."),
    fit_n: int = typer.Option(2000, "--fit-n", help="Binary detector: clean training inputs it learns from."),
    eot_samples: int = typer.Option(None, "--eot-samples", help="Random transformations and certified "
                                    "classifiers: draws per input of the adaptive (EOT) surrogate (default 10 "
                                    "for a transformation, 16 for a certified classifier)."),
    n: int = typer.Option(1000, "--n", help="Test examples the defended model is checked on."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Defend a model with a transformation or a calibrated detector and save it."""
    from bastion.core import seed_everything
    from bastion.data import load
    from bastion.defenses.saved import check_defense, is_defended, make_defense, save_defended

    check_int(n, "--n", 1, MAX_EXAMPLES)
    check_int(calib_n, "--calib-n", 1, MAX_EXAMPLES)
    check_int(fit_n, "--fit-n", 2, MAX_EXAMPLES)
    if eot_samples is not None:
        check_int(eot_samples, "--eot-samples", 1, 10_000)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    check_out_file(out, "--out", (".st", ".safetensors"))
    rec = check_defense(defense, parse_kv(params))
    if Path(str(out)).resolve() == Path(str(model)).resolve():
        raise ConfigError("--out must differ from --model; the undefended checkpoint is kept")
    setup(quiet, wide, threads)
    clf = load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg, device)
    if is_defended(clf):
        raise ConfigError(f"{model} is already a defended model ({clf.meta['defended']['name']}); defend the "
                          "undefended checkpoint instead")
    data = data or clf.meta.get("dataset")
    if data is None:
        raise ConfigError("no data set: pass --data (needed to check and calibrate the defense)")
    train = load(data, "train", root=root) if rec["kind"] in ("detector", "ensemble", "xensemble") else None
    test = load(data, "test", root=root).take(n)
    if tuple(test.input_shape) != clf.spec.shape:
        raise ConfigError(f"data {data!r} has inputs of shape {test.input_shape}, the model expects "
                          f"{clf.spec.shape}")
    seed_everything(seed)
    thr = use_threads(clf, test.x, threads)
    defended = make_defense(clf, rec["name"], rec["params"], train, calib_n=calib_n, fit_n=fit_n,
                            eot_samples=eot_samples, seed=seed)
    clean = clf.accuracy(test.x, test.y)
    # a certified classifier is random: its accuracy is the expected prediction over the noise
    served = (defended.adaptive() if rec["kind"] == "certified" else defended).accuracy(test.x, test.y)  # type: ignore[operator]
    report = {"checkpoint": str(out), "model": str(model), "data": data, "defense": rec["name"],
              "kind": rec["kind"], "params": rec["params"], "n": len(test), "clean_accuracy": clean,
              "defended_accuracy": served, "seed": seed, "device": str(clf.device), **thr}
    rows = [["clean accuracy (undefended)", clean], ["clean accuracy (defended)", served]]
    if rec["kind"] == "certified":
        report.update(defended_accuracy_note="expected prediction over the noise "
                                             f"({defended.eot_samples} draws per input)")  # type: ignore[attr-defined]
    if rec["kind"] == "detector":
        det = defended.detector  # type: ignore[attr-defined]
        flagged = defended.detect(test.x)  # type: ignore[attr-defined]
        fpr = float(flagged.float().mean())
        report.update(threshold=det.threshold, fpr=det.fpr, calibration=det.calibration, test_fpr=fpr)
        rows += [["threshold", det.threshold], ["calibrated fpr (train split)", det.calibration.get(
            "benign_flagged")], ["false-positive rate (test)", fpr]]
    if rec["kind"] == "xensemble":
        pred, flagged = defended.predict_with_reject(test.x)  # type: ignore[attr-defined]
        flag_rate = float(flagged.float().mean())
        answered = float(((pred.cpu() == test.y) & ~flagged.cpu()).float().mean())
        record = defended.meta["defended"]
        report.update(false_flag_rate=flag_rate, answered_accuracy=answered, teams=record["teams"],
                      denoisers=record["denoisers"], admission=record["admission"])
        rows += [["benign false-flag rate (test)", flag_rate], ["answered and correct (test)", answered],
                 ["team(s)", "; ".join(",".join(record["members"][i] for i in t) for t in record["teams"])],
                 ["denoisers admitted", ", ".join(d["name"] for d in record["denoisers"]) or "-"]]
    elif rec["kind"] == "ensemble":
        record = defended.meta["defended"]
        report.update(teams=record["teams"])
        rows += [["team", ",".join(record["members"][i] for i in record["teams"][0])]]
    save_defended(out, defended, defended_test_accuracy=served)
    from bastion.defenses.saved import defended_record

    report["defended"] = defended_record(defended)[0]
    console.print(table(f"{rec['name']} on {Path(str(model)).name}", ["metric", "value"], rows))
    console.print(f"[green]saved[/] {out}", highlight=False)
    emit(report, as_json)
