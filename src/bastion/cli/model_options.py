"""The model-source options every command with `--model` shares, and their loader.

`--model` takes a Bastion checkpoint (.st), a torch.export program (.pt2) or a Python
entry point `my_pkg.models:build` (a callable returning an `nn.Module`, imported from
sys.path and the current folder) with `--weights` (a plain safetensors state dict),
`--model-arg key=value` (its keyword arguments) and the input spec (`--input-shape`,
`--num-classes`, `--mean`, `--std`, `--bounds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bastion.errors import ConfigError

if TYPE_CHECKING:  # torch is imported only when a command runs, so --help stays fast
    from bastion.core import Classifier

MODEL_HELP = ("Model: a Bastion checkpoint (.st), a torch.export program (.pt2) or an entry point "
              "my_pkg.models:build (a callable returning an nn.Module; see --weights, --input-shape).")
WEIGHTS_OPTION = typer.Option(None, "--weights", help="Safetensors state dict loaded (strictly) into the "
                              "model an entry point --model builds.")
MODEL_ARG_OPTION = typer.Option(None, "--model-arg", help="Keyword argument key=value for the entry point "
                                "(repeatable).")
INPUT_SHAPE_OPTION = typer.Option(None, "--input-shape", help="Per-example input shape of an entry-point or "
                                  ".pt2 model, e.g. 1,28,28 (C,H,W) or 64.")
NUM_CLASSES_OPTION = typer.Option(None, "--num-classes", help="Output classes (default: the width of the "
                                  "model's output).")
MEAN_OPTION = typer.Option(None, "--mean", help="Per-channel mean the model expects, comma list (inputs stay "
                           "in --bounds; normalisation is applied inside).")
STD_OPTION = typer.Option(None, "--std", help="Per-channel standard deviation, comma list.")
BOUNDS_OPTION = typer.Option(None, "--bounds", help="Raw input range LOW,HIGH (default 0,1).")


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    from bastion.cli.common import parse_floats

    return None if text is None else tuple(parse_floats(text, flag))


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """`1,28,28` -> (1, 28, 28); one-line error otherwise."""
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers such as 1,28,28, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"--input-shape must be positive integers such as 1,28,28, got {text!r}")
    return shape


def model_source(model: Path | str, weights: Path | None = None, input_shape: str | None = None,
                 num_classes: int | None = None, mean: str | None = None, std: str | None = None,
                 bounds: str | None = None, model_arg: list[str] | None = None) -> Any:
    """A checked ModelSource from the command-line options (nothing is loaded yet)."""
    from bastion.cli.common import check_input_path, check_int, parse_kv
    from bastion.models import ModelSource

    check_input_path(Path(str(model)), "--model")
    check_input_path(weights, "--weights")
    check_int(num_classes, "--num-classes", 2, 1_000_000)
    return ModelSource(model=str(model), weights=weights, input_shape=parse_shape(input_shape),
                       num_classes=num_classes, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                       bounds=_floats(bounds, "--bounds"), kwargs=parse_kv(model_arg))  # type: ignore[arg-type]


def load_model_from_options(model: Path | str, weights: Path | None = None, input_shape: str | None = None,
                            num_classes: int | None = None, mean: str | None = None, std: str | None = None,
                            bounds: str | None = None, model_arg: list[str] | None = None,
                            device: str = "auto") -> Classifier:
    """Load the model the options describe (see `bastion.models.load_model`)."""
    from bastion.models import load_model

    src = model_source(model, weights, input_shape, num_classes, mean, std, bounds, model_arg)
    clf = load_model(src, device=device)
    if src.kind == "entry-point" and src.weights is None:
        from bastion.cli.common import console
        console.print(f"note: no --weights; {src.model} keeps the weights it is built with", highlight=False)
    return clf
