"""`bastion privacy`: epsilon of a DP-SGD run under every accountant, and the noise
multiplier that meets a target epsilon."""

from __future__ import annotations

import typer

from bastion.cli.app import app
from bastion.cli.common import JSON_OPTION, console, emit, table

privacy_app = typer.Typer(help="Privacy accounting for DP-SGD (Poisson-subsampled Gaussian).",
                          no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("epsilon")
def epsilon_cmd(
    q: float = typer.Option(..., "--q", help="Sampling rate (batch size / data set size), in (0, 1]."),
    sigma: float = typer.Option(..., "--sigma", help="Noise multiplier."),
    steps: int = typer.Option(..., "--steps", help="Number of DP-SGD steps T."),
    delta: float = typer.Option(1e-5, "--delta", help="Target delta, in (0, 1)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Epsilon spent after T steps under basic, advanced and optimal composition, zCDP,
    the moments accountant and RDP with the tight conversion (= Opacus)."""
    from bastion.cli.common import check_float
    from bastion.privacy.accountants import LABELS, compute_epsilons

    check_float(sigma, "--sigma", low=1e-6)  # below it sigma^2 underflows; epsilon is unbounded anyway
    eps = compute_epsilons(q, sigma, steps, delta)
    console.print(table(f"epsilon at delta={delta:g} (q={q:g}, sigma={sigma:g}, T={steps})",
                        ["accountant", "name", "epsilon"],
                        [[k, LABELS[k], f"{v:.4f}"] for k, v in eps.items()]))
    emit({"q": q, "sigma": sigma, "steps": steps, "delta": delta, "epsilon": eps,
          "labels": LABELS}, as_json)


@privacy_app.command("sigma")
def sigma_cmd(
    target_eps: float = typer.Option(..., "--target-eps", help="Epsilon to spend at most."),
    q: float = typer.Option(..., "--q", help="Sampling rate, in (0, 1]."),
    steps: int = typer.Option(..., "--steps", help="Number of DP-SGD steps T."),
    delta: float = typer.Option(1e-5, "--delta", help="Target delta, in (0, 1)."),
    accountant: str = typer.Option("rdp", "--accountant",
                                   help="basic | advanced | optimal | zcdp | moments | rdp."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The smallest noise multiplier whose run spends at most --target-eps."""
    from bastion.privacy.accountants import compute_epsilons, noise_multiplier

    s = noise_multiplier(target_eps, q, steps, delta, accountant=accountant)
    eps = compute_epsilons(q, s, steps, delta)
    console.print(f"noise multiplier sigma = {s:.4f} ({accountant} accountant: epsilon "
                  f"{eps[accountant]:.4f} <= {target_eps:g} at delta={delta:g})", highlight=False)
    emit({"sigma": s, "accountant": accountant, "target_epsilon": target_eps, "q": q,
          "steps": steps, "delta": delta, "epsilon": eps}, as_json)
