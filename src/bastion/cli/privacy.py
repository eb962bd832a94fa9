"""`bastion privacy`: epsilon of a DP-SGD run under every accountant, labelled guarantee
or reference formula, and the noise multiplier that meets a target epsilon."""

from __future__ import annotations

import typer

from bastion.cli.app import app
from bastion.cli.common import JSON_OPTION, WIDE_OPTION, console, emit, setup, table

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
    wide: bool = WIDE_OPTION,
) -> None:
    """Epsilon after T steps: the guarantees (PLD, PRV, RDP, moments accountant) and the
    reference formulas (basic, advanced, optimal composition, zCDP), each labelled; the
    headline is the tightest guarantee."""
    from bastion.cli.common import check_float
    from bastion.privacy.accountants import KINDS, LABELS, privacy_summary
    from bastion.privacy.statement import TABLE_COLUMNS, figure_rows, headline_line

    setup(wide=wide)
    check_float(sigma, "--sigma", low=1e-6)  # below it sigma^2 underflows; epsilon is unbounded anyway
    summ = privacy_summary(q, sigma, steps, delta)
    console.print(table(f"epsilon at delta={delta:g} (q={q:g}, sigma={sigma:g}, T={steps}; "
                        "Poisson sampling, add-or-remove-one adjacency)",
                        TABLE_COLUMNS, figure_rows(summ)))
    console.print(headline_line(summ), highlight=False)
    accs = summ["accountants"]
    emit({"q": q, "sigma": sigma, "steps": steps, "delta": delta, **summ,
          "epsilon": {k: v["epsilon"] for k, v in accs.items()},  # type: ignore[union-attr]
          "labels": LABELS, "kinds": KINDS}, as_json)


@privacy_app.command("sigma")
def sigma_cmd(
    target_eps: float = typer.Option(..., "--target-eps", help="Epsilon to spend at most."),
    q: float = typer.Option(..., "--q", help="Sampling rate, in (0, 1]."),
    steps: int = typer.Option(..., "--steps", help="Number of DP-SGD steps T."),
    delta: float = typer.Option(1e-5, "--delta", help="Target delta, in (0, 1)."),
    accountant: str = typer.Option("rdp", "--accountant",
                                   help="A guarantee: rdp | pld | prv | moments (reference "
                                        "formulas cannot calibrate noise)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The smallest noise multiplier whose run spends at most --target-eps under a
    guarantee accountant."""
    from bastion.privacy.accountants import check_guarantee, noise_multiplier, privacy_summary

    check_guarantee(accountant)
    s = noise_multiplier(target_eps, q, steps, delta, accountant=accountant)
    summ = privacy_summary(q, s, steps, delta)
    got = summ["accountants"][accountant]["epsilon"]  # type: ignore[index]
    console.print(f"noise multiplier sigma = {s:.4f} ({accountant} accountant, a guarantee: "
                  f"epsilon {got:.4f} <= {target_eps:g} at delta={delta:g})", highlight=False)
    emit({"sigma": s, "accountant": accountant, "kind": "guarantee", "target_epsilon": target_eps,
          "q": q, "steps": steps, "delta": delta, **summ,
          "epsilon": {k: v["epsilon"] for k, v in summ["accountants"].items()}},  # type: ignore[union-attr]
         as_json)
