"""`bastion certify`: certified accuracy of a model by randomized smoothing (Cohen et al.
2019), PixelDP (Lecuyer et al. 2019) or Linf bound propagation (IBP / CROWN-IBP / CROWN),
with the per-input certificates written to a file."""

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
    check_float,
    check_input_path,
    check_int,
    check_out_file,
    console,
    emit,
    parse_floats,
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


@app.command("certify")
def certify_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
    method: str = typer.Option("smoothing", "--method", help="smoothing | pixeldp | ibp | crown-ibp | crown."),
    sigma: float = typer.Option(None, "--sigma", help="Smoothing noise level (default: the checkpoint's "
                                "gaussian-aug sigma, else 0.25)."),
    samples: int = typer.Option(100_000, "--samples", help="Smoothing: estimation draws n per input."),
    n0: int = typer.Option(100, "--n0", help="Smoothing: selection draws per input."),
    alpha: float = typer.Option(0.001, "--alpha", help="Smoothing: error level in (0, 0.5)."),
    radii: str = typer.Option(None, "--radii", help="L2 radii (smoothing) or attack sizes T (pixeldp) to "
                              "report, comma list (default 0,0.25,0.5,0.75,1 / 0,0.05,...,0.5)."),
    eps: str = typer.Option("0.1", "--eps", help="Bounds: Linf radii, comma list."),
    draws: int = typer.Option(300, "--draws", help="PixelDP: Monte Carlo draws per input."),
    eta: float = typer.Option(0.05, "--eta", help="PixelDP: confidence level of the bounds."),
    batch_size: int = typer.Option(1000, "--batch-size", help="Noisy copies per forward pass."),
    denoise_epochs: int = typer.Option(0, "--denoise-epochs", help="Smoothing: first train a denoiser in front "
                                       "of the unchanged model for N epochs on the training split (denoised "
                                       "smoothing, Salman et al. 2020; 0 = off)."),
    denoise_objective: str = typer.Option("stability", "--denoise-objective",
                                          help="Denoiser objective: stability | mse | mse+stability."),
    n: int = typer.Option(500, "--n", help="Test inputs to certify."),
    data: str = typer.Option(None, "--data", "-d", help="Data set (default: the checkpoint's)."),
    out: Path = typer.Option(None, "--out", "-o", help="Per-input certificates (.json)."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Certify a model's robustness and print certified accuracy at the requested radii."""
    from bastion.data import load
    from bastion.defenses.certify.run import (
        DEFAULT_RADII,
        DEFAULT_THRESHOLDS,
        CertifySettings,
        check_model,
        run_certify,
        settings_dict,
    )
    from bastion.fileio import atomic_write, strict_json

    check_int(n, "--n", 1, MAX_EXAMPLES)
    check_int(samples, "--samples", 1, 10**9)
    check_int(n0, "--n0", 1, 10**9)
    check_int(draws, "--draws", 1, 10**8)
    check_int(batch_size, "--batch-size", 1, 1 << 20)
    check_int(denoise_epochs, "--denoise-epochs", 0, 10_000)
    check_float(sigma, "--sigma", positive=True, high=1e3)
    check_float(alpha, "--alpha", positive=True, high=0.5)
    check_float(eta, "--eta", positive=True, high=0.5)
    if alpha is not None and alpha >= 0.5:
        raise ConfigError(f"--alpha must lie in (0, 0.5), got {alpha}")
    if eta >= 0.5:
        raise ConfigError(f"--eta must lie in (0, 0.5), got {eta}")
    check_common(seed, device, root)
    check_input_path(model, "--model")
    if out is not None:
        check_out_file(out, "--out", (".json",))
    default = DEFAULT_THRESHOLDS if method == "pixeldp" else DEFAULT_RADII
    settings = CertifySettings(method=str(method).lower(), sigma=sigma, n0=n0, samples=samples, alpha=alpha,
                               radii=tuple(parse_floats(radii, "--radii")) if radii else default,
                               eps=tuple(parse_floats(eps, "--eps")), draws=draws, eta=eta,
                               batch_size=batch_size, seed=seed, denoise_epochs=denoise_epochs,
                               denoise_objective=denoise_objective)
    settings.validate()
    setup(quiet, wide, threads)
    clf = load_model_from_options(model, weights, input_shape, num_classes, mean, std, bounds, model_arg, device)
    check_model(clf, settings)
    data = data or clf.meta.get("dataset")
    if data is None:
        raise ConfigError("no data set: pass --data")
    test = load(data, "test", root=root).take(n)
    if tuple(test.input_shape) != clf.spec.shape:
        raise ConfigError(f"data {data!r} has inputs of shape {test.input_shape}, the model expects "
                          f"{clf.spec.shape}")
    thr = use_threads(clf, test.x, threads)
    train = load(data, "train", root=root) if settings.denoise_epochs else None
    res = run_certify(clf, test.x, test.y, settings, train)
    summary = res["summary"]
    key = "threshold T" if settings.method == "pixeldp" else "Linf eps" if settings.method not in (
        "smoothing",) else "L2 radius"
    rows = [[c["radius"], c["accuracy"]] for c in summary["certified_accuracy"]]
    label = "robust accuracy" if settings.method == "pixeldp" else "verified accuracy" \
        if settings.method not in ("smoothing",) else "certified accuracy"
    console.print(table(f"{settings.method} on {Path(str(model)).name} ({summary['n']} inputs, "
                        f"{summary['time_per_input_s']:.3g} s per input)", [key, label], rows))
    report = {"model": str(model), "data": data, "settings": settings_dict(settings), **summary, **thr,
              "seed": seed, "device": str(clf.device)}
    if out is not None:
        atomic_write(out, strict_json({"summary": report, "certificates": res["rows"]}))
        report["certificates"] = str(out)
        console.print(f"[green]wrote[/] {out}", highlight=False)
    emit(report, as_json)
