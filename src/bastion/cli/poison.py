"""`bastion poison`: write a poisoned copy of a training set (label flipping, BadNets,
the clean-label backdoor or feature collision) as an .npz that `bastion train --data`
accepts: x, y, poisoned_index, metadata (JSON), and the clean test split."""

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
    check_int,
    check_out_file,
    console,
    emit,
    setup,
    table,
)
from bastion.errors import ConfigError


def parse_position(text: str) -> str | tuple[int, int]:
    """A corner name or 'ROW,COL'."""
    if "," not in text:
        return text
    try:
        r, c = (int(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--trigger-position must be a corner name or ROW,COL integers, got {text!r}") from None
    return r, c


@app.command("poison")
def poison_cmd(
    data: str = typer.Option("mnist-5k", "--data", "-d", help="Data set to poison (its training split)."),
    attack: str = typer.Option("badnets", "--attack", help="label-flip | badnets | clean-label | feature-collision."),
    fraction: float = typer.Option(0.05, "--fraction", help="Share of the training set to poison, in [0, 1]."),
    target: int = typer.Option(0, "--target", help="Target class (feature collision: the base class)."),
    source: int = typer.Option(None, "--source", help="Label flipping: the source class."),
    mode: str = typer.Option(None, "--mode", help="label-flip: source-target | all-to-one | random; "
                             "badnets: all-to-one | all-to-all."),
    trigger: str = typer.Option("pattern", "--trigger", help="Trigger kind: pixel | pattern | square."),
    trigger_size: int = typer.Option(3, "--trigger-size", help="Trigger side in pixels."),
    trigger_position: str = typer.Option("bottom-right", "--trigger-position",
                                         help="bottom-right | bottom-left | top-right | top-left | ROW,COL."),
    model: Path = typer.Option(None, "--model", "-m", help="Clean-label / feature collision: the attacker's "
                               "model trained on clean data (checkpoint)."),
    eps: float = typer.Option(0.3, "--eps", help="Clean-label: Linf size of the PGD perturbation."),
    steps: int = typer.Option(20, "--steps", help="Clean-label: PGD steps."),
    target_index: int = typer.Option(0, "--target-index", help="Feature collision: the test input to misclassify."),
    n_poisons: int = typer.Option(50, "--n-poisons", help="Feature collision: poisons crafted."),
    opacity: float = typer.Option(0.3, "--opacity", help="Feature collision: watermark opacity in [0, 1)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Poison a training set and write it as an .npz."""
    from bastion.attacks.poisoning.run import (
        NEEDS_MODEL,
        PoisonSettings,
        apply_poison,
        npz_bytes,
        settings_dict,
    )
    from bastion.data import load
    from bastion.fileio import atomic_write

    check_float(fraction, "--fraction", low=None)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"--fraction must lie in [0, 1] (the share of the training set to poison), got {fraction}")
    check_float(eps, "--eps", low=0.0, high=1.0)
    check_int(steps, "--steps", 1, 100_000)
    check_int(trigger_size, "--trigger-size", 1, 100_000)
    check_common(seed, device, root)
    check_out_file(out, "--out", (".npz",))
    s = PoisonSettings(attack=str(attack).lower(), fraction=fraction, target=target, source=source, mode=mode,
                       trigger_kind=trigger, trigger_size=trigger_size,
                       trigger_position=parse_position(trigger_position), eps=eps, steps=steps,
                       target_index=target_index, n_poisons=n_poisons, opacity=opacity, seed=seed)
    setup(quiet, wide, threads)
    train, test = load(data, "train", root=root), load(data, "test", root=root)
    s.validate(train, test)
    clf = None
    if s.attack in NEEDS_MODEL:
        if model is None:
            raise ConfigError(f"{s.attack} needs --model: a checkpoint trained on clean data (the attacker's surrogate)")
        from bastion.cli.model_options import load_model_from_options

        clf = load_model_from_options(model, device=device)
    res = apply_poison(train, s, clf, test)
    meta = {"source_data": data, "attack": s.attack, "settings": settings_dict(s), "n": len(res.data)}
    atomic_write(out, npz_bytes(res, test, meta))
    rec = res.record
    console.print(table(f"{s.attack} on {data}", ["poisoned", "share", "target", "trigger"],
                        [[rec.n_poisoned, res.fraction, rec.target,
                          None if rec.trigger is None else f"{rec.trigger.kind} {rec.trigger.side}px"]]))
    console.print(f"[green]wrote[/] {out}", highlight=False)
    report = {"out": str(out), "data": data, "attack": s.attack, "n": len(res.data), "n_poisoned": rec.n_poisoned,
              "fraction": res.fraction, "target": rec.target, "settings": settings_dict(s),
              "trigger": None if rec.trigger is None else rec.trigger.to_dict(),
              "poisoned_index": rec.index.tolist(),
              "extras": {k: v for k, v in rec.extras.items() if not hasattr(v, "shape")}}
    emit(report, as_json)
