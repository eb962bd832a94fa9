"""The `leakage` audit section: gradient-leakage attacks on a few examples, for each
configured initialisation and gradient defense.

    - kind: leakage
      attack: cpl                  # cpl | dlg | idlg | ig
      inits: [patterned, random]   # dummy initialisations to compare
      defenses: [none, "noise:0.01", "prune:0.9"]
      n: 4                         # examples attacked (each batch of `batch` examples)
      batch: 1
      max_iter: 100
      split: test                  # where the victim examples come from
      uniform_init: false          # true: attack a U(-0.5, 0.5) re-initialised copy of the
                                   # model (the DLG/CPL setting) instead of its own weights
      params: {}                   # extra attack parameters (alpha, lr, tv, ...)

The gradient is computed at the audited model's weights (or the re-initialised copy) on
the victim examples; the attacker gets only that payload. Every (init, defense) run is
one resumable step. Output: a table (ASR, iterations to success, MSE, PSNR, SSIM, label
accuracy, iterations run and why the attacks stopped, seconds) and a grid of originals
versus reconstructions. The figures come from long float32 optimisations whose reduction
order depends on the intra-op thread count, so each row records `threads`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from bastion.audit.scorecard import FAIL, PASS, WARN, at_most, not_measured, thresholds_of
from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    ScoreRow,
    SectionOutput,
    fig_to_png,
    register_section,
)
from bastion.core import ConfigError
from bastion.params import validated
from bastion.progress import track

MAX_GRID = 8
COLUMNS = ["attack", "init", "defense", "n", "asr", "iterations_to_success", "mse", "nmse", "psnr",
           "ssim", "label_accuracy", "iterations", "stop_reason", "seconds_per_attack"]


class LeakageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "leakage"
    name: str | None = None
    attack: str = "cpl"
    inits: list[str] = Field(default_factory=lambda: ["patterned"])
    defenses: list[str] = Field(default_factory=lambda: ["none"])
    n: int = Field(4, ge=1, le=64, strict=True)
    batch: int = Field(1, ge=1, le=16, strict=True)
    max_iter: int = Field(100, ge=1, le=100_000, strict=True)
    split: str = "test"
    uniform_init: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


def _parse(cfg: dict[str, Any]) -> LeakageSpec:
    from bastion.attacks.privacy.leakage import make_config
    from bastion.defenses.gradient import parse_defense

    spec = validated(LeakageSpec, cfg, "leakage section")
    if spec.split not in ("train", "test"):
        raise ConfigError(f"leakage split must be 'train' or 'test', got {spec.split!r}")
    check_leakage_params(spec.attack, spec.params)
    for init in spec.inits:
        make_config(spec.attack, init=init, max_iter=spec.max_iter, **spec.params)
    for d in spec.defenses:
        if d != "none":
            parse_defense(d)
    return spec


def check_leakage_params(attack: str, params: dict[str, Any]) -> None:
    """Type-check extra leakage-attack parameters against the attack's config fields."""
    from bastion.attacks.privacy.leakage import ATTACKS
    from bastion.attacks.registry import check_param_types
    from bastion.core import unknown_name

    if attack not in ATTACKS:
        raise unknown_name("leakage attack", attack, ATTACKS)
    check_param_types(ATTACKS[attack][1], attack, params)


def grid_figure(originals: torch.Tensor, rows: list[tuple[str, torch.Tensor]],
                title: str | None = None) -> Any:
    """A matplotlib figure: originals in the first row, one row per reconstruction set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(originals.shape[0], MAX_GRID)
    all_rows = [("original", originals), *rows]
    fig, axes = plt.subplots(len(all_rows), n, figsize=(1.3 * n + 1.6, 1.35 * len(all_rows)),
                             squeeze=False)
    for r, (label, imgs) in enumerate(all_rows):
        for c in range(n):
            ax = axes[r][c]
            img = imgs[c].detach().cpu().float().clamp(0, 1)
            if img.dim() == 3 and img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            elif img.dim() == 3:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def attack_examples(model: Any, x: torch.Tensor, y: torch.Tensor, attack: str, init: str,
                    defense: str, batch: int, max_iter: int, seed: int,
                    params: dict[str, Any] | None = None,
                    init_pool: tuple[torch.Tensor, torch.Tensor] | None = None,
                    ) -> tuple[dict[str, Any], torch.Tensor]:
    """Attack `x` in batches of `batch`; return the summary row and the reconstructions."""
    from bastion.attacks.privacy.leakage import make_config, run_leakage, shared_gradient
    from bastion.defenses.gradient import parse_defense

    cfg = make_config(attack, init=init, max_iter=max_iter, seed=seed, **(params or {}))
    fn = None if defense == "none" else parse_defense(defense)
    recs, per = [], []
    starts = range(0, x.shape[0] - batch + 1, batch)
    for i in track(starts, f"{attack} {init} {defense}"):
        xb, yb = x[i:i + batch], y[i:i + batch]
        payload = shared_gradient(model, xb, yb)
        if fn is not None:
            payload = fn(payload, seed=seed + i)
        res = run_leakage(attack, model, payload, cfg, reference=xb, reference_labels=yb,
                          init_pool=init_pool)
        recs.append(res.reconstruction.cpu())
        per.append(res.cpu())
    succ = torch.cat([r.success for r in per]).float()
    its = torch.cat([r.iterations_to_success for r in per])
    ok = its[its >= 0].float()
    reasons: dict[str, int] = {}
    for r in per:
        reasons[r.stop_reason] = reasons.get(r.stop_reason, 0) + 1
    row = {
        "attack": attack, "init": init, "defense": defense, "n": int(succ.numel()),
        "asr": float(succ.mean()),
        "iterations_to_success": float(ok.mean()) if ok.numel() else None,
        "mse": float(torch.cat([r.mse for r in per]).mean()),
        "nmse": float(torch.cat([r.nmse for r in per]).mean()),
        "psnr": float(torch.cat([r.psnr for r in per]).clamp(max=99).mean()),
        "ssim": float(torch.cat([r.ssim for r in per]).mean()) if per[0].ssim is not None else None,
        "label_accuracy": sum(r.label_accuracy or 0.0 for r in per) / len(per),
        "iterations": sum(r.iterations for r in per) / len(per), "max_iter": cfg.max_iter,
        "stop_reason": ", ".join(f"{k} x{v}" if len(per) > 1 else k for k, v in sorted(reasons.items())),
        "stop_reasons": reasons, "threads": torch.get_num_threads(),
        "seconds_per_attack": sum(r.wall_time for r in per) / len(per),
        "per_example": {
            "success": succ.int().tolist(),
            "mse": torch.cat([r.mse for r in per]).tolist(),
            "psnr": torch.cat([r.psnr for r in per]).clamp(max=99).tolist(),
            "ssim": torch.cat([r.ssim for r in per]).tolist() if per[0].ssim is not None else None,
        },
    }
    return row, torch.cat(recs)


def _score(out: SectionOutput, th: Any, spec: LeakageSpec, rows: list[dict[str, Any]],
           per_example: dict[tuple[str, str], dict[str, Any] | None], name: str) -> None:
    """One scorecard row per gradient defense: the mean SSIM of the best initialisation's
    reconstructions (high = the private inputs are recoverable from the shared gradient)."""
    from bastion.metrics.stats import mean_interval

    out.threat_model = (
        f"An honest-but-curious server (or eavesdropper) in federated or distributed training who "
        f"sees one shared gradient of a batch of {spec.batch} private example(s) and knows the model "
        f"reconstructs the inputs by gradient matching ({spec.attack}).")
    out.advice = (
        "A high SSIM means the shared gradient gives the training images away. Add noise to the "
        "gradient (DP-SGD: `bastion train --dp`, or bastion.defenses.gradient noise), share "
        "gradients of larger batches, or compress them (pruning / quantisation in "
        "bastion.defenses.gradient); compare the defense rows of the table.")
    fail_at, warn_at = th.leakage_ssim, th.leakage_ssim - th.leakage_warn_band
    for defense in spec.defenses:
        mine = [r for r in rows if r["defense"] == defense]
        metric = f"reconstruction SSIM ({spec.attack}, defense {defense}, batch {spec.batch})"
        scored = [r for r in mine if r.get("ssim") is not None]
        if not scored:
            out.scorecard.append(not_measured("leakage", metric, "SSIM needs image inputs", section=name,
                                              higher_is_better=False, threshold=fail_at))
            continue
        best = max(scored, key=lambda r: r["ssim"])
        value = float(best["ssim"])
        per = per_example.get((best["init"], defense)) or {}
        ci = mean_interval(per["ssim"], bounds=(-1.0, 1.0)) if per.get("ssim") else None
        verdict = at_most(value, fail_at, warn_at)
        what = "no defense" if defense == "none" else f"defense {defense}"
        meaning = {
            PASS: f"With {what}, reconstructions from the shared gradient are poor (mean SSIM {value:.2f}).",
            WARN: f"With {what}, reconstructions partly resemble the private inputs (mean SSIM {value:.2f}).",
            FAIL: f"With {what}, the private inputs are recovered from the shared gradient (mean SSIM "
                  f"{value:.2f}).",
        }[verdict]
        out.scorecard.append(ScoreRow(threat="leakage", metric=metric, value=value, verdict=verdict,
                                      meaning=meaning, ci=ci, threshold=fail_at, higher_is_better=False,
                                      section=name, note=f"best initialisation: {best['init']}"))
    if any(str(r.get("stop_reason") or "").startswith("max_iter") for r in rows):
        out.notes.append("Some attacks stopped at max_iter: a longer optimisation may reconstruct better.")
    if min(r["n"] for r in rows) < 8:
        out.notes.append(f"Only {min(r['n'] for r in rows)} example(s) attacked per configuration: the SSIM "
                         "interval is wide; raise n for a firmer figure.")


@register_section("leakage", validate=lambda cfg: _parse(cfg) and None)
def run_leakage_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.attacks.privacy.leakage import uniform_init_

    spec = _parse(cfg)
    data = ctx.test if spec.split == "test" else ctx.train
    n = (min(spec.n, len(data)) // spec.batch) * spec.batch
    if n == 0:
        raise ConfigError(f"leakage section: need at least batch={spec.batch} examples")
    x, y = data.x[:n], data.y[:n]
    model = ctx.model
    if spec.uniform_init:
        model = uniform_init_(copy.deepcopy(ctx.model), seed=ctx.seed)
    pool_src = ctx.train if spec.split == "test" else ctx.test
    pool = (pool_src.x[:500], pool_src.y[:500])
    out = SectionOutput(name=spec.name or "leakage", kind="leakage")
    rows: list[dict[str, Any]] = []
    grid: list[tuple[str, torch.Tensor]] = []
    per_example: dict[tuple[str, str], dict[str, Any] | None] = {}
    for init in spec.inits:
        for defense in spec.defenses:
            key = (f"leakage/{spec.attack}/{init}/{defense}/n={n}/b={spec.batch}/it={spec.max_iter}/"
                   f"u={spec.uniform_init}/{sorted(spec.params.items())}/split={spec.split}/seed={ctx.seed}")

            def work(init: str = init, defense: str = defense, key: str = key) -> dict[str, Any]:
                row, rec = attack_examples(model, x, y, spec.attack, init, defense, spec.batch,
                                           spec.max_iter, ctx.seed, spec.params, pool)
                ctx.save_tensors(key, {"reconstruction": rec[:MAX_GRID]})
                return row

            row = dict(ctx.step(key, work))
            per_example[(init, defense)] = row.pop("per_example", None)
            rows.append(row)
            t = ctx.load_tensors(key)
            if t is not None:
                grid.append((f"{init}\n{defense}", t["reconstruction"]))
    cols = COLUMNS
    out.tables.append(ReportTable("Gradient leakage", cols, [[r.get(c) for c in cols] for r in rows]))
    out.summary = {"attack": spec.attack, "n": n, "batch": spec.batch, "max_iter": spec.max_iter,
                   "uniform_init": spec.uniform_init, "runs": rows,
                   "max_asr": max(r["asr"] for r in rows)}
    name = spec.name or "leakage"
    saved = {f"{m}:{i}:{d}": torch.tensor(v[m], dtype=torch.float32)
             for (i, d), v in per_example.items() if v for m in ("success", "mse", "psnr", "ssim")
             if v.get(m) is not None}
    if saved:
        ctx.save_tensors(f"leakage-per-example/{name}", saved)
        out.summary["per_example_tensors"] = f"leakage-per-example/{name}"
    _score(out, thresholds_of(ctx), spec, rows, per_example, name)
    if grid:
        fig = grid_figure(x[:MAX_GRID], grid, f"{spec.attack}: originals vs reconstructions")
        out.figures.append(ReportFigure("Gradient leakage: originals vs reconstructions",
                                        fig_to_png(fig),
                                        "Top row: private examples; below: reconstructions per "
                                        "initialisation and defense."))
    return out
