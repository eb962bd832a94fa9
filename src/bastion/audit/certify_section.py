"""The `certify` audit section: certified robustness of the audited model, by randomized
smoothing (Cohen et al. 2019), PixelDP (Lecuyer et al. 2019) or Linf bound propagation
(IBP / CROWN-IBP / CROWN; Gowal et al. 2018, Zhang et al. 2018, 2020).

    - kind: certify
      method: smoothing          # smoothing | pixeldp | ibp | crown-ibp | crown
      sigma: 0.25                # smoothing; default: the checkpoint's gaussian-aug sigma
      samples: 10000             # CERTIFY's n (Cohen et al.: 100000)
      alpha: 0.001
      radii: [0, 0.25, 0.5, 1.0] # L2 radii (smoothing) or attack sizes T (pixeldp)
      eps: [0.1]                 # Linf radii (bounds)
      n: 100                     # test inputs certified (default: all the audit's)
      denoise_epochs: 0          # > 0: denoised smoothing (Salman et al. 2020) of the unchanged model
      headline: 0.5              # radius the scorecard judges (default: the largest non-zero one)

The certification is one resumable step. The report shows certified accuracy against
radius (a figure and a table), the abstain rate for smoothing, the PixelDP robust
precision, and one scorecard row: certified accuracy at the headline radius, judged with
the evasion thresholds (a certified accuracy is a lower bound on robust accuracy under any
attack of that size).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bastion.audit import plots
from bastion.audit.scorecard import PASS, WARN, at_least, thresholds_of
from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    ScoreRow,
    SectionOutput,
    fig_to_png,
    register_section,
)
from bastion.defenses.certify.run import (
    DEFAULT_RADII,
    DEFAULT_THRESHOLDS,
    METHODS,
    CertifySettings,
    check_model,
    run_certify,
    settings_dict,
)
from bastion.params import validated


class CertifySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "certify"
    name: str | None = None
    method: str = Field("smoothing", description=" | ".join(METHODS))
    sigma: float | None = Field(None, gt=0, le=1e3)
    n0: int = Field(100, ge=1, le=10**9, strict=True)
    samples: int = Field(10_000, ge=1, le=10**9, strict=True)
    alpha: float = Field(0.001, gt=0, lt=0.5)
    radii: list[float] | None = None
    eps: list[float] = Field(default_factory=lambda: [0.1])
    draws: int = Field(300, ge=1, le=10**8, strict=True)
    eta: float = Field(0.05, gt=0, lt=0.5)
    batch_size: int = Field(1000, ge=1, le=1 << 20, strict=True)
    n: int | None = Field(None, ge=1, le=1_000_000, strict=True)
    denoise_epochs: int = Field(0, ge=0, le=10_000, strict=True)
    denoise_objective: str = "stability"
    headline: float | None = Field(None, ge=0)


def _parse(cfg: dict[str, Any]) -> tuple[CertifySpec, CertifySettings]:
    spec = validated(CertifySpec, cfg, "certify section")
    default = DEFAULT_THRESHOLDS if spec.method == "pixeldp" else DEFAULT_RADII
    s = CertifySettings(method=spec.method, sigma=spec.sigma, n0=spec.n0, samples=spec.samples, alpha=spec.alpha,
                        radii=tuple(spec.radii) if spec.radii else default, eps=tuple(spec.eps), draws=spec.draws,
                        eta=spec.eta, batch_size=spec.batch_size, denoise_epochs=spec.denoise_epochs,
                        denoise_objective=spec.denoise_objective)
    s.validate()
    return spec, s


@register_section("certify", validate=lambda cfg: _parse(cfg) and None)
def run_certify_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    spec, s = _parse(cfg)
    s = CertifySettings(**{**settings_dict(s), "radii": s.radii, "eps": s.eps, "seed": ctx.seed})
    check_model(ctx.model, s)
    name = spec.name or "certify"
    test = ctx.test.take(spec.n)
    key = f"certify/{name}/{json.dumps(settings_dict(s), sort_keys=True)}/n={len(test)}"
    res = ctx.step(key, lambda: run_certify(ctx.model, test.x, test.y, s, ctx.train))
    summary = res["summary"]
    out = SectionOutput(name=name, kind="certify")
    out.summary = {**summary, "settings": settings_dict(s)}
    norm = summary.get("norm", "l2")
    points = [(c["radius"], c["accuracy"]) for c in summary["certified_accuracy"]]
    word = {"smoothing": "certified accuracy", "pixeldp": "robust accuracy"}.get(s.method, "verified accuracy")
    what = {"smoothing": f"randomized smoothing, sigma {summary.get('sigma')}, n = {s.samples}, alpha {s.alpha}",
            "pixeldp": f"PixelDP, {summary.get('mechanism')} noise, L = {summary.get('construction_bound')}, "
                       f"{s.draws} draws, eta {s.eta}"}.get(s.method, f"{s.method} bounds")
    radius_word = {"smoothing": "L2 radius", "pixeldp": "attack size T"}.get(s.method, "Linf eps")
    rows = [[r, a] for r, a in points]
    caption = f"{what}; {summary['n']} test inputs, {summary['time_per_input_s']:.3g} s per input."
    if s.method == "smoothing":
        caption += f" Abstained on {summary['abstain_rate']:.1%} of inputs."
    if s.method == "pixeldp":
        cols = ["threshold T", "robust accuracy", "robust precision"]
        rows = [[c["threshold"], c["robust_accuracy"], c["robust_precision"]] for c in summary["curves"]]
        caption += f" Conventional accuracy {summary['accuracy']:.3f}."
    else:
        cols = [radius_word, word]
    out.tables.append(ReportTable(f"{word.capitalize()} versus {radius_word}", cols, rows, caption))
    if points:
        fig = plots.robustness_figure({what: points}, n=max(1, summary["n"]), norms={what: norm},
                                      title=f"{word.capitalize()} versus radius")
        out.figures.append(ReportFigure(f"{word.capitalize()} versus radius", fig_to_png(fig),
                                        "Share of test inputs classified correctly with a certificate at least "
                                        "that large; shaded: 95% Wilson interval."))
    _score(ctx, out, spec, s, points, word, radius_word, name)
    return out


def _score(ctx: AuditContext, out: SectionOutput, spec: CertifySpec, s: CertifySettings,
           points: list[tuple[float, float]], word: str, radius_word: str, name: str) -> None:
    th = thresholds_of(ctx)
    out.threat_model = ("An attacker who may change the input by any perturbation within the stated norm ball, "
                        "with full knowledge of the model. A certificate holds against every such attack, "
                        "including ones not yet invented; for smoothing and PixelDP it holds with the stated "
                        "statistical confidence.")
    out.advice = ("Certified accuracy is a lower bound on robust accuracy. To raise it: train the base model "
                  "with Gaussian noise (bastion train --defense gaussian-aug --sigma S, Cohen et al. 2019) "
                  "before smoothing, put a denoiser in front of an existing model (Salman et al. 2020), or train "
                  "with interval bounds (bastion train --defense ibp, Gowal et al. 2018) for Linf certificates. "
                  "Larger sigma reaches larger radii at a cost in clean accuracy; more samples tighten the "
                  "bound.")
    nonzero = [r for r, _ in points if r > 0]
    head = spec.headline if spec.headline is not None else (max(nonzero) if nonzero else None)
    match = [a for r, a in points if abs(r - (head or 0)) < 1e-12]
    if head is None or not match:
        out.notes.append("no non-zero radius configured (or the headline radius is not among them): "
                         "the scorecard row is left out")
        return
    value = match[0]
    verdict = at_least(value, th.evasion_robust_accuracy, th.evasion_warn_band)
    meaning = {PASS: f"{value:.0%} of inputs are provably classified correctly against any perturbation of "
                     f"{radius_word} {head:g}.",
               WARN: f"Borderline: only {value:.0%} of inputs carry a correct certificate at {radius_word} "
                     f"{head:g}.",
               }.get(verdict, f"Only {value:.0%} of inputs carry a correct certificate at {radius_word} {head:g}: "
                              "the model is not certifiably robust at this size.")
    out.scorecard.append(ScoreRow(threat="certified", metric=f"{word} ({s.method}), {radius_word} {head:g}",
                                  value=value, verdict=verdict, meaning=meaning,
                                  threshold=th.evasion_robust_accuracy, section=name))
