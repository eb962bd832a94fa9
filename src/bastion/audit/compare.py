"""Compare two finished audit runs: per threat and budget, the change from run A to run B
with its 95% confidence interval and whether it is significant.

Figures come from each run's scorecard when it has one, and from its section summaries
and tables (evasion robust accuracy per attack and budget, membership AUC and TPR at low
FPR, leakage reconstruction success and SSIM, the DP epsilon) otherwise and in addition.

Statistics, per kind of figure (difference = B - A):
  - rates on the same examples (both runs audited the same test tensors and recorded the
    per-example outcomes): Newcombe's (1998, method 10) score interval for paired
    proportions, and McNemar's exact test on the discordant pairs (McNemar 1947);
  - rates on different examples: Newcombe's (1998, method 10 for independent samples)
    hybrid score interval built from the two Wilson intervals, and the pooled
    two-proportion z test; the normal-approximation interval
    F +- 1.96 sqrt(p1(1-p1)/n1 + p2(1-p2)/n2) is reported beside it;
  - AUC: Hanley and McNeil's (1982) standard error for each run, z test on the difference;
  - scorecard figures with recorded intervals but no sample size: the MOVER interval
    (Zou and Donner 2008) from the two intervals; significant when it excludes 0;
  - epsilons and means without per-example values: the difference only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bastion.core import ConfigError

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------- statistics
def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n trials (Wilson 1927)."""
    if n <= 0:
        return (0.0, 1.0)
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_independent(p1: float, n1: int, p2: float, n2: int, z: float = Z95) -> tuple[float, float]:
    """CI of p1 - p2 for independent samples: Newcombe's (1998) hybrid score interval."""
    l1, u1 = wilson(p1, n1, z)
    l2, u2 = wilson(p2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def newcombe_paired(x1: list[int], x2: list[int], z: float = Z95) -> tuple[float, float]:
    """CI of mean(x1) - mean(x2) for paired 0/1 outcomes on the same examples: Newcombe's
    (1998) method 10, Wilson intervals combined with the continuity-corrected phi."""
    n = len(x1)
    a = sum(1 for u, v in zip(x1, x2) if u and v)
    b = sum(1 for u, v in zip(x1, x2) if u and not v)
    c = sum(1 for u, v in zip(x1, x2) if not u and v)
    d_ = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(p1, n, z)
    l2, u2 = wilson(p2, n, z)
    den = (a + b) * (c + d_) * (a + c) * (b + d_)
    num = a * d_ - b * c
    phi = 0.0 if den == 0 else (max(num - n / 2, 0.0) if num > 0 else num) / math.sqrt(den)
    diff = p1 - p2
    lo2 = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    hi2 = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return (max(-1.0, diff - math.sqrt(max(lo2, 0.0))), min(1.0, diff + math.sqrt(max(hi2, 0.0))))


def mcnemar_exact(x1: list[int], x2: list[int]) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    b = sum(1 for u, v in zip(x1, x2) if u and not v)
    c = sum(1 for u, v in zip(x1, x2) if v and not u)
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def normal_p(z: float) -> float:
    """Two-sided p-value of a standard-normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_z(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z test."""
    pool = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return normal_p((p1 - p2) / se)


def wald_diff(p1: float, n1: int, p2: float, n2: int, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval F +- z sqrt(V), V = p1(1-p1)/n1 + p2(1-p2)/n2."""
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return (p1 - p2 - half, p1 - p2 + half)


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley and McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def mover(d: float, a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float]:
    """CI of b - a from each figure's (value, low, high): Zou and Donner's (2008) MOVER."""
    (va, la, ua), (vb, lb, ub) = a, b
    return (d - math.sqrt((vb - lb) ** 2 + (ua - va) ** 2), d + math.sqrt((ub - vb) ** 2 + (va - la) ** 2))


# ----------------------------------------------------------------------------- figures of a run
@dataclass
class RunFigure:
    """One comparable measurement of a run."""

    threat: str
    metric: str
    value: float | None
    kind: str = "value"  # "rate" (a proportion over n examples), "auc", "value"
    n: int | None = None
    n_neg: int | None = None  # AUC: non-members
    ci: tuple[float, float] | None = None
    higher_is_better: bool | None = True  # None: no better direction (a cost, a setting)
    unit: str = ""  # "": a rate in [0, 1] (shown in %); "eps": a privacy budget; else a plain number
    outcomes: list[int] | None = None  # per-example 0/1, when recorded

    @property
    def key(self) -> tuple[str, str]:
        return (self.threat, self.metric)


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    figures: dict[tuple[str, str], RunFigure] = field(default_factory=dict)

    @property
    def examples_digest(self) -> str | None:
        return (self.results.get("cache_context") or {}).get("test")


def load_run(path: str | Path) -> Run:
    """Read a finished run folder; ConfigError (one line) when it is not one."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such run folder")
    if p.is_file() and p.name == "results.json":
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{p}: not a run folder (give the folder an audit wrote, e.g. runs/NAME)")
    f = p / "results.json"
    if not f.is_file():
        raise ConfigError(f"{p}: no results.json; not a finished audit run (an interrupted audit "
                          "resumes with the same bastion audit command)")
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{f}: not valid JSON ({e.__class__.__name__})") from None
    except OSError as e:
        raise ConfigError(f"{f}: cannot read ({e.strerror or e})") from None
    if not isinstance(res, dict) or "sections" not in res or "finished" not in res:
        raise ConfigError(f"{f}: not the results of a finished bastion audit")
    run = Run(p, res)
    for fig in extract_figures(run):
        run.figures.setdefault(fig.key, fig)
    return run


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _budget(eps: Any) -> str:
    return "min-norm" if eps is None else f"{float(eps):g}"


_STEP_KEY = re.compile(r"^evasion/(?P<label>.+?)/eps=(?P<eps>[^/]+)/")


def _evasion_outcomes(run_dir: Path) -> dict[tuple[str, str], dict[str, list]]:
    """Per-example evasion outcomes from the run's step files, by (attack label, budget)."""
    out: dict[tuple[str, str], dict[str, list]] = {}
    steps = run_dir / "steps"
    if not steps.is_dir():
        return out
    for f in sorted(steps.glob("evasion_*.json")):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            m = _STEP_KEY.match(str(rec.get("key", "")))
            per = (rec.get("value") or {}).get("per_example")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if m and isinstance(per, dict):
            eps = m.group("eps")
            out[(m.group("label"), "None" if eps == "None" else f"{float(eps):g}")] = per
    return out


def _robust_outcomes(per: dict[str, list], budget: float | None) -> list[int] | None:
    """Per-example robustness at `budget`: fixed-budget runs record it directly; for a
    minimum-norm run an example stays robust unless the attack succeeded within budget."""
    try:
        correct = [int(v) for v in per["correct_after"]]
        if budget is None:
            return correct
        succ, norm = per["success"], per["norm"]
        return [int(not (s and nv <= budget + 1e-6) and (c or s)) for c, s, nv in zip(correct, succ, norm)]
    except (KeyError, TypeError, ValueError):
        return None


def extract_figures(run: Run) -> list[RunFigure]:
    """Every comparable figure of a run: its scorecard rows, then section figures."""
    res = run.results
    figs: list[RunFigure] = []
    from bastion.audit.report import is_rate

    for row in res.get("scorecard") or []:
        v = _num(row.get("value"))
        ci = row.get("ci")
        unit = str(row.get("unit") or "") or ("" if is_rate(row) else "score")
        figs.append(RunFigure(threat=str(row.get("threat", "")), metric=str(row.get("metric", "")), value=v,
                              kind="value", ci=(float(ci[0]), float(ci[1])) if ci and None not in ci else None,
                              higher_is_better=bool(row.get("higher_is_better", True)), unit=unit))
    outcomes = _evasion_outcomes(run.path)
    for name, sec in (res.get("sections") or {}).items():
        kind, summ = sec.get("kind"), sec.get("summary") or {}
        if kind == "evasion":
            n = int(summ.get("n") or res.get("data", {}).get("n") or 0)
            fixed = {(r.get("attack"), _budget(r.get("eps"))) for r in summ.get("runs") or [] if r.get("eps") is not None}
            for label, pts in (summ.get("curves") or {}).items():
                for eps, acc in pts:
                    b = _budget(eps)
                    per = outcomes.get((label, b)) if (label, b) in fixed else outcomes.get((label, "None"))
                    oc = None
                    if per is not None:
                        oc = _robust_outcomes(per, None if (label, b) in fixed else float(eps))
                        # only trust the per-example record when it reproduces the summary
                        if oc is None or len(oc) != n or abs(sum(oc) / max(n, 1) - float(acc)) > 1e-9:
                            oc = None
                    figs.append(RunFigure("evasion", f"robust accuracy, {label} eps {b}", float(acc), "rate",
                                          n=n, outcomes=oc))
        elif kind == "membership":
            cand = (summ.get("threat_model") or {}).get("candidates") or {}
            n_pos, n_neg = cand.get("members"), cand.get("nonmembers")
            for t in sec.get("tables") or []:
                cols = t.get("columns") or []
                for r in t.get("rows") or []:
                    row = dict(zip(cols, r))
                    a = row.get("attack")
                    if _num(row.get("auc")) is not None:
                        figs.append(RunFigure("membership", f"AUC, {a}", float(row["auc"]), "auc" if n_pos and n_neg
                                              else "value", n=n_pos, n_neg=n_neg, higher_is_better=False,
                                              unit="score"))
                    for col, label in (("tpr@0.1%fpr", "TPR at 0.1% FPR"), ("tpr@1%fpr", "TPR at 1% FPR")):
                        if _num(row.get(col)) is not None:
                            figs.append(RunFigure("membership", f"{label}, {a}", float(row[col]),
                                                  "rate" if n_pos else "value", n=n_pos, higher_is_better=False))
        elif kind == "leakage":
            for r in summ.get("runs") or []:
                tag = f"{r.get('attack')}, init {r.get('init')}, defense {r.get('defense')}"
                if _num(r.get("asr")) is not None:
                    figs.append(RunFigure("leakage", f"reconstruction success, {tag}", float(r["asr"]), "rate",
                                          n=int(r.get("n") or 0) or None, higher_is_better=False))
                if _num(r.get("ssim")) is not None:
                    figs.append(RunFigure("leakage", f"reconstruction SSIM, {tag}", float(r["ssim"]),
                                          higher_is_better=False, unit="score"))
        elif kind == "dp":
            if summ.get("private") is False:
                eps = math.inf
            else:
                head = summ.get("headline") or {}
                eps = _num(head.get("epsilon")) if isinstance(head, dict) else None
            if eps is not None:
                figs.append(RunFigure("dp", f"epsilon ({name})", eps, higher_is_better=False, unit="eps"))
    return figs


# ----------------------------------------------------------------------------- comparison
@dataclass
class Difference:
    threat: str
    metric: str
    a: float | None
    b: float | None
    diff: float | None  # b - a
    ci: tuple[float, float] | None
    test: str
    p_value: float | None
    significant: bool | None
    change: str  # "better", "worse", "no significant change", "changed" (no better direction), "n/a"
    n_a: int | None = None
    n_b: int | None = None
    wald_ci: tuple[float, float] | None = None
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _change(diff: float, significant: bool | None, higher_is_better: bool | None) -> str:
    if significant is False or diff == 0:
        return "no significant change"
    if higher_is_better is None:
        return "changed"
    better = (diff > 0) == higher_is_better
    tag = "better" if better else "worse"
    return tag if significant else f"{tag} (significance not tested)"


def compare_figures(fa: RunFigure, fb: RunFigure, paired: bool) -> Difference:
    """The difference B - A of one figure, with its interval and test."""
    base = {"threat": fa.threat, "metric": fa.metric, "a": fa.value, "b": fb.value, "unit": fa.unit,
            "n_a": fa.n, "n_b": fb.n}
    if fa.value is None or fb.value is None:
        return Difference(**base, diff=None, ci=None, test="not measured in both runs", p_value=None,
                          significant=None, change="n/a")
    a, b = fa.value, fb.value
    if math.isinf(a) or math.isinf(b):
        d = math.inf if b > a else (-math.inf if b < a else 0.0)
        return Difference(**base, diff=d, ci=None, test="difference only", p_value=None, significant=None,
                          change="no significant change" if d == 0 else _change(d, None, fa.higher_is_better))
    d = b - a
    ci: tuple[float, float] | None = None
    p: float | None = None
    wald = None
    if fa.kind == "rate" and fb.kind == "rate" and fa.n and fb.n:
        if paired and fa.outcomes is not None and fb.outcomes is not None and len(fa.outcomes) == len(fb.outcomes):
            ci = newcombe_paired(fb.outcomes, fa.outcomes)
            p = mcnemar_exact(fb.outcomes, fa.outcomes)
            test = "McNemar exact, paired (same examples); Newcombe paired CI"
        else:
            ci = newcombe_independent(b, fb.n, a, fa.n)
            p = two_proportion_z(b, fb.n, a, fa.n)
            test = "two-proportion z; Newcombe CI"
        wald = wald_diff(b, fb.n, a, fa.n)
    elif fa.kind == "auc" and fb.kind == "auc" and fa.n and fa.n_neg and fb.n and fb.n_neg:
        se = math.hypot(hanley_mcneil_se(a, fa.n, fa.n_neg), hanley_mcneil_se(b, fb.n, fb.n_neg))
        ci = (d - Z95 * se, d + Z95 * se)
        p = normal_p(d / se) if se > 0 else (1.0 if d == 0 else 0.0)
        test = "z test, Hanley-McNeil standard errors"
    elif fa.ci is not None and fb.ci is not None:
        ci = mover(d, (a, *fa.ci), (b, *fb.ci))
        test = "MOVER interval from the recorded 95% CIs"
    else:
        return Difference(**base, diff=d, ci=None, test="difference only (no per-example values)",
                          p_value=None, significant=None,
                          change="no change" if d == 0 else _change(d, None, fa.higher_is_better))
    sig = (p < 0.05) if p is not None else (ci[0] > 0 or ci[1] < 0)
    return Difference(**base, diff=d, ci=ci, test=test, p_value=p, significant=sig,
                      change=_change(d, sig, fa.higher_is_better), wald_ci=wald)


@dataclass
class Comparison:
    a: Run
    b: Run
    paired: bool
    rows: list[Difference]
    only_a: list[str]
    only_b: list[str]

    def to_dict(self) -> dict[str, Any]:
        def info(r: Run) -> dict[str, Any]:
            res = r.results
            return {"path": str(r.path), "run_id": res.get("run_id"), "model": (res.get("model") or {}).get("name"),
                    "checkpoint": (res.get("model") or {}).get("checkpoint"), "data": res.get("data"),
                    "verdict": res.get("verdict"), "finished": res.get("finished")}
        return {"a": info(self.a), "b": info(self.b), "paired": self.paired,
                "differences": [r.to_dict() for r in self.rows], "only_in_a": self.only_a, "only_in_b": self.only_b}


def compare_runs(path_a: str | Path, path_b: str | Path) -> Comparison:
    """Compare run B against run A (differences are B - A)."""
    ra, rb = load_run(path_a), load_run(path_b)
    paired = ra.examples_digest is not None and ra.examples_digest == rb.examples_digest
    # a threat measured in neither run (a "not measured" scorecard row in both) has nothing to compare
    rows = [compare_figures(fa, rb.figures[k], paired) for k, fa in ra.figures.items()
            if k in rb.figures and not (fa.value is None and rb.figures[k].value is None)]
    only_a = [f"{t}: {m}" for (t, m) in ra.figures if (t, m) not in rb.figures]
    only_b = [f"{t}: {m}" for (t, m) in rb.figures if (t, m) not in ra.figures]
    if not rows:
        raise ConfigError(f"{ra.path} and {rb.path} share no figure to compare (different attacks, "
                          "budgets or sections)")
    return Comparison(ra, rb, paired, rows, only_a, only_b)


# ----------------------------------------------------------------------------- HTML
def format_figure(v: float | None, unit: str, signed: bool = False) -> str:
    """Plain-text figure: rates (unit "") in % (differences in percentage points)."""
    if v is None:
        return "-"
    if math.isinf(v):
        return ("+" if signed and v > 0 else "-" if v < 0 else "") + "inf"
    if unit == "":
        return f"{100 * v:+.1f} pt" if signed else f"{100 * v:.1f}%"
    return f"{v:+.3g}" if signed else f"{v:.3g}"


def _fmt_row(d: Difference, v: float | None, signed: bool = False) -> str:
    from bastion.audit.report import esc

    return esc(format_figure(v, d.unit, signed)).replace("inf", "&infin;")


def render_html(cmp: Comparison) -> str:
    """A self-contained HTML page of the comparison, in the audit report's style."""
    from bastion.audit.report import esc, page

    def label(r: Run) -> str:
        m = r.results.get("model") or {}
        return f"{esc(r.path)} &middot; {esc(m.get('name', '?'))} &middot; {esc(r.results.get('finished', '?'))}"

    cls = {"better": "v-pass", "worse": "v-fail"}
    body = ["<h1>Bastion: comparison of two audit runs</h1>",
            f"<p class='meta'><b>A</b> {label(cmp.a)}<br><b>B</b> {label(cmp.b)}</p>",
            "<p class='meta'>Differences are B &minus; A, in percentage points (pt) for rates. "
            + ("Both runs audited the same examples: rates are compared pair by pair (McNemar). "
               if cmp.paired else "The runs audited different examples: rates are compared as "
                                  "independent samples (two-proportion z test). ")
            + "Significant: p &lt; 0.05, or the 95% interval excludes 0.</p>",
            "<div class='tw'><table id='comparison'><tr><th class='l'>threat</th><th class='l'>metric</th>"
            "<th>A</th><th>B</th><th>B &minus; A</th><th>95% CI</th><th>p</th><th class='l'>change</th>"
            "<th class='l'>test</th></tr>"]
    for d in cmp.rows:
        ci = "&ndash;" if d.ci is None else f"{_fmt_row(d, d.ci[0], True)} &hellip; {_fmt_row(d, d.ci[1], True)}"
        p = "&ndash;" if d.p_value is None else f"{d.p_value:.3g}"
        badge = f"<span class='badge {cls.get(d.change.split(' ')[0], 'v-nm')}'>{esc(d.change)}</span>"
        body.append(f"<tr><td class='l'>{esc(d.threat)}</td><td class='l'>{esc(d.metric)}</td>"
                    f"<td>{_fmt_row(d, d.a)}</td><td>{_fmt_row(d, d.b)}</td><td>{_fmt_row(d, d.diff, True)}</td>"
                    f"<td>{ci}</td><td>{p}</td><td class='l'>{badge}</td><td class='l'>{esc(d.test)}</td></tr>")
    body.append("</table></div>")
    for title, items in (("Only in A", cmp.only_a), ("Only in B", cmp.only_b)):
        if items:
            body.append(f"<h3>{title}</h3><p class='meta'>{esc('; '.join(items))}</p>")
    body.append("<p class='meta'>Intervals: Newcombe 1998 (score intervals for differences of "
                "proportions); McNemar 1947; Hanley and McNeil 1982 (AUC); Zou and Donner 2008 (MOVER).</p>")
    return page("Bastion: run comparison", "\n".join(body))


__all__ = ["Comparison", "Difference", "compare_runs", "load_run", "mcnemar_exact", "newcombe_independent",
           "newcombe_paired", "render_html", "wilson"]
