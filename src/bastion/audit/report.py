"""Self-contained HTML report: every table and figure inline (PNG as base64), inline CSS,
no script and no external asset, so the file can be mailed or archived as is.

The page opens with the overall verdict and the scorecard (one row per threat: metric,
value with its 95% confidence interval, threshold, verdict, what it means), then one
block per section (threat model, warnings, tables with human column names and units,
figures, what the figures mean and what to try), then how the run was made (data
selection, seeds, attack parameters as run, device, versions), a glossary and the papers
the run's attacks and defenses come from.

Runs written before the scorecard existed still render: rows come from
`results["scorecard"]`, else from each section's `scorecard`, else the page says that no
verdicts were recorded.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from bastion.audit.sections import VERDICTS, ReportTable, ScoreRow, SectionOutput

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1240px;padding:12px 20px 40px;color:#1d2330;line-height:1.4;font-size:15px;background:#fff}
h1{font-size:1.45rem;margin:.2rem 0 .1rem} h2{font-size:1.2rem;border-bottom:2px solid #e3e7ef;
padding-bottom:.25rem;margin:2rem 0 .6rem} h3{font-size:1rem;margin:1.1rem 0 .3rem}
.meta{color:#5b6475;font-size:.86rem;margin:.1rem 0} a{color:#2453a6}
.top{display:flex;align-items:center;gap:14px;flex-wrap:wrap;margin:.5rem 0 .4rem}
.overall{font-size:1.05rem;font-weight:600;padding:.35rem .8rem;border-radius:6px}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:10px;font-size:.8rem;font-weight:600;
white-space:nowrap;border:1px solid transparent}
.v-pass{background:#dff3e4;color:#135c2a;border-color:#9ad3a9}
.v-warn{background:#fff1cc;color:#6b4a00;border-color:#e8c766}
.v-fail{background:#fbdcdc;color:#8a1616;border-color:#e79a9a}
.v-nm{background:#eceff4;color:#4a5263;border-color:#c9cfda}
.tw{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.4rem 0;font-size:.84rem;width:100%}
th,td{border:1px solid #d9dee8;padding:.25rem .45rem;text-align:right;vertical-align:top}
td{white-space:nowrap} td.l{white-space:normal;overflow-wrap:break-word} th{overflow-wrap:normal}
th{background:#f3f5f9;font-weight:600} td.l,th.l{text-align:left}
table.score td,table.score th{font-size:.86rem} table.score td.meaning{text-align:left;min-width:18rem;white-space:normal}
caption{caption-side:bottom;text-align:left;color:#5b6475;font-size:.8rem;padding:.2rem 0}
.ci{color:#5b6475;font-size:.78rem;white-space:nowrap}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.35rem .7rem;margin:.4rem 0;font-size:.88rem}
.threat{background:#f5f7fb;border-left:4px solid #8ea2c8;padding:.35rem .7rem;margin:.4rem 0;font-size:.9rem}
.advice{background:#eef7f0;border-left:4px solid #5aa66f;padding:.35rem .7rem;margin:.6rem 0;font-size:.9rem}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px;margin:.6rem 0}
figure{margin:0} figure img{max-width:100%;height:auto;display:block;border:1px solid #e3e7ef}
figcaption{color:#5b6475;font-size:.82rem;margin-top:.2rem}
nav{font-size:.86rem;margin:.3rem 0} nav a{margin-right:.8rem}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;font-size:.88rem;margin:.4rem 0}
dl.kv dt{color:#5b6475} dl.kv dd{margin:0;overflow-wrap:anywhere}
dl.gloss dt{font-weight:600;margin-top:.4rem} dl.gloss dd{margin:0 0 0 1rem;font-size:.9rem}
ol.refs li{font-size:.88rem;margin:.15rem 0}
code{background:#f3f5f9;padding:0 .25rem;border-radius:3px;font-size:.85em}
"""

KIND_TITLES = {"evasion": "Evasion: adversarial examples", "membership": "Membership inference",
               "leakage": "Gradient leakage", "dp": "Differential privacy",
               "defense": "Defense: undefended, defended and adaptive", "certify": "Certified robustness",
               "fl-poisoning": "Federated poisoning", "fl-privacy": "Federated leakage and DP",
               "backdoor": "Backdoor scan",
               "poisoning": "Data poisoning"}

# Raw result keys -> (column heading, hover text with the unit or definition).
COLUMN_NAMES: dict[str, tuple[str, str]] = {
    "attack": ("attack", ""),
    "eps": ("budget (eps)", "perturbation budget in the attack's norm, inputs scaled to [0, 1]; "
                            "'min-norm' = the attack looks for the smallest perturbation"),
    "robust_accuracy": ("robust accuracy", "fraction of examples still classified correctly after the attack"),
    "success_rate": ("attack success rate (ASR)", "fraction of examples whose prediction the attack changed"),
    "mean_l2": ("mean L2 distance", "mean Euclidean norm of the perturbation, inputs in [0, 1]"),
    "mean_linf": ("mean Linf distance", "mean largest per-pixel change, inputs in [0, 1]"),
    "mean_l0": ("mean L0 (pixels changed)", "mean number of input values changed"),
    "queries_mean": ("queries / example", "model evaluations (forward or gradient) per example"),
    "time_per_example_s": ("s / example", "wall-clock seconds per example"),
    "mean_conf": ("mean confidence", "mean softmax probability of the adversarial prediction"),
    "ssim": ("SSIM", "structural similarity to the original, 1 = identical (Wang et al. 2004)"),
    "psnr": ("PSNR (dB)", "peak signal-to-noise ratio to the original, higher = closer"),
    "wall_time_s": ("wall time (s)", ""),
    "auc": ("AUC", "area under the ROC curve, 0.5 = guessing"),
    "advantage": ("advantage (TPR - FPR)", "membership advantage, max over thresholds (Yeom et al. 2018)"),
    "balanced_accuracy": ("balanced accuracy", "best accuracy on a balanced member / non-member set"),
    "tpr@0.1%fpr": ("TPR at 0.1% FPR", "members found while wrongly flagging 0.1% of non-members"),
    "tpr@1%fpr": ("TPR at 1% FPR", "members found while wrongly flagging 1% of non-members"),
    "tpr@0.01%fpr": ("TPR at 0.01% FPR", ""),
    "tpr@10%fpr": ("TPR at 10% FPR", ""),
    "time_s": ("time (s)", ""),
    "init": ("initialisation", "how the attacker's dummy input starts"),
    "defense": ("gradient defense", "transformation applied to the shared gradient"),
    "n": ("n", "examples"),
    "asr": ("reconstruction success (ASR)", "fraction of examples reconstructed (the attack's success criterion)"),
    "iterations_to_success": ("iterations to success", "mean over reconstructed examples"),
    "mse": ("MSE", "mean squared error to the original, inputs in [0, 1]"),
    "nmse": ("normalised MSE", "MSE divided by the original's energy"),
    "label_accuracy": ("label accuracy", "fraction of labels the attacker recovered"),
    "iterations": ("iterations run", "mean optimiser iterations"),
    "stop_reason": ("stopped by", ""),
    "seconds_per_attack": ("s / attack", "wall-clock seconds per attacked batch"),
    "accountant": ("accountant", ""), "kind": ("kind", ""), "epsilon": ("epsilon", ""),
    "delta": ("delta", ""), "note": ("note", ""), "parameter": ("parameter", ""), "value": ("value", ""),
    "statement": ("statement", ""),
}
# Columns holding a rate in [0, 1]: shown as percentages.
RATE_COLUMNS = {"robust_accuracy", "success_rate", "clean_error", "balanced_accuracy", "tpr@0.1%fpr", "tpr@1%fpr",
                "tpr@0.01%fpr", "tpr@10%fpr", "asr", "label_accuracy", "clean_accuracy"}
LEFT_COLUMNS = {"attack", "norm", "flags", "init", "defense", "stop_reason", "accountant", "kind", "note", "parameter",
                "value", "statement", "name"}

DEFAULT_CAPTIONS = {
    "evasion": "One row per attack and budget; budgets and distances in the attack's norm on inputs "
               "scaled to [0, 1]. Minimum-norm attacks run once; their robust accuracy at each budget "
               "is in the figure.",
    "membership": "Members: the audit's training split; non-members: its test split. TPR at a low "
                  "FPR is the figure that matters for privacy (Carlini et al. 2022).",
    "leakage": "One row per initialisation and gradient defense; distances to the private inputs in "
               "[0, 1].",
}

DEFAULT_THREAT = {
    "evasion": "An attacker who controls the model's input at prediction time changes it within a "
               "small budget (an Lp ball around the original) so that the prediction changes. "
               "White-box attacks (FGSM, PGD, C&W, DeepFool, APGD) use the model's gradients; "
               "score- and decision-based attacks (Square, HopSkipJump) only query it.",
    "membership": "An attacker who can query the model's output on a candidate record wants to "
                  "know whether the record was in the training set. Shadow-model attacks (LiRA, "
                  "RMIA) train models like the target on data from the same distribution.",
    "leakage": "In federated or distributed training an honest-but-curious server (or anyone who "
               "sees the update) receives the gradient of a client's batch and reconstructs the "
               "private inputs and labels from it.",
    "dp": "Differential privacy bounds what any attacker, whatever they know, can learn about one "
          "training record from the released model: epsilon and delta bound the ratio of output "
          "probabilities with and without that record.",
}

DEFAULT_ADVICE = {
    "evasion": "Robust accuracy far below clean accuracy at a budget a real attacker can afford "
               "means the model is not robust at that budget. Try adversarial training "
               "(bastion.training: PGD, fast or TRADES training) and re-audit; input "
               "transformations (docs/defenses.md) only count when they also resist BPDA / EOT "
               "attacks through them.",
    "membership": "A TPR at 0.1% FPR well above 0.1% means some training records can be identified "
                  "with confidence. Reduce overfitting (fewer epochs, regularisation, more data) "
                  "or train with DP-SGD (`bastion train --dp`) and re-audit.",
    "leakage": "A high reconstruction SSIM or PSNR means shared gradients expose the inputs. Share "
               "updates of larger batches, add gradient noise or pruning (`noise:SIGMA`, "
               "`prune:FRACTION` gradient defenses) or train with DP-SGD, and re-audit.",
    "dp": "A smaller epsilon at the same delta is a stronger guarantee; an epsilon above about 10 "
          "gives little protection in practice. Noise that was seeded (reproducible) gives no "
          "guarantee at all.",
}

GLOSSARY = [
    ("ASR (attack success rate)", "Fraction of attacked examples on which the attack reached its "
     "goal: a changed prediction (evasion) or a reconstruction that meets the success criterion "
     "(gradient leakage)."),
    ("Robust accuracy", "Accuracy on the attacked examples: correct predictions that survived the "
     "attack at the given budget, over all evaluated examples."),
    ("Budget, eps", "The largest perturbation the attacker may add, measured in a norm on inputs "
     "scaled to [0, 1]. Linf budget: no pixel changes by more than eps (eps = 8/255 ~ 0.031 is a "
     "common CIFAR-10 setting, 0.3 for MNIST). L2 budget: the Euclidean length of the whole "
     "perturbation is at most eps. L0: the number of changed values."),
    ("TPR at FPR", "Membership inference: the fraction of training members the attack flags "
     "(true-positive rate) when its threshold lets through only the given fraction of non-members "
     "(false-positive rate), e.g. at 0.1% FPR. Guessing gives TPR = FPR."),
    ("AUC", "Area under the ROC curve: 0.5 is guessing, 1.0 separates members perfectly. An average "
     "over all thresholds, it hides the low-FPR regime that matters for privacy."),
    ("Advantage", "Max over thresholds of TPR - FPR (Yeom et al. 2018); 0 = no information."),
    ("epsilon, delta", "Differential-privacy budget: with probability at least 1 - delta, adding or "
     "removing one record changes the probability of any outcome by at most a factor e^epsilon. "
     "Smaller is more private; delta should be well below 1 / (training-set size)."),
    ("SSIM", "Structural similarity between an image and its reconstruction or adversarial "
     "version, in [-1, 1]; 1 = identical (Wang et al. 2004)."),
    ("PSNR", "Peak signal-to-noise ratio in dB: 10 log10(1 / MSE) for inputs in [0, 1]; above about "
     "20 dB a reconstruction is recognisable."),
    ("95% CI", "95% confidence interval: for rates the Wilson score interval over the evaluated "
     "examples; a range that would contain the true value in 95% of repeated audits."),
]

# name -> (citation, what it is). Chosen per run from the attacks and defenses it used.
REFERENCES: dict[str, tuple[str, str]] = {
    "fgsm": ("Goodfellow, Shlens and Szegedy 2015", "Explaining and harnessing adversarial examples (FGSM). ICLR."),
    "pgd": ("Madry et al. 2018", "Towards deep learning models resistant to adversarial attacks (PGD). ICLR."),
    "bim": ("Kurakin, Goodfellow and Bengio 2017", "Adversarial examples in the physical world (BIM). ICLR workshop."),
    "mifgsm": ("Dong et al. 2018", "Boosting adversarial attacks with momentum (MI-FGSM). CVPR."),
    "cw": ("Carlini and Wagner 2017", "Towards evaluating the robustness of neural networks (C&W). IEEE S&P."),
    "deepfool": ("Moosavi-Dezfooli, Fawzi and Frossard 2016", "DeepFool: a simple and accurate method to fool deep neural networks. CVPR."),
    "apgd": ("Croce and Hein 2020", "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks (APGD, AutoAttack). ICML."),
    "square": ("Andriushchenko et al. 2020", "Square attack: a query-efficient black-box adversarial attack via random search. ECCV."),
    "hopskipjump": ("Chen, Jordan and Wainwright 2020", "HopSkipJumpAttack: a query-efficient decision-based attack. IEEE S&P."),
    "jsma": ("Papernot et al. 2016", "The limitations of deep learning in adversarial settings (JSMA). IEEE EuroS&P."),
    "one-pixel": ("Su, Vargas and Sakurai 2019", "One pixel attack for fooling deep neural networks. IEEE TEVC."),
    "universal": ("Moosavi-Dezfooli et al. 2017", "Universal adversarial perturbations. CVPR."),
    "shokri": ("Shokri et al. 2017", "Membership inference attacks against machine learning models. IEEE S&P."),
    "yeom": ("Yeom et al. 2018", "Privacy risk in machine learning: analyzing the connection to overfitting. IEEE CSF."),
    "lira": ("Carlini et al. 2022", "Membership inference attacks from first principles (LiRA). IEEE S&P."),
    "rmia": ("Zarifzadeh et al. 2024", "Low-cost high-power membership inference attacks (RMIA). ICML."),
    "dlg": ("Zhu, Liu and Han 2019", "Deep leakage from gradients (DLG). NeurIPS."),
    "idlg": ("Zhao, Mopuri and Bilen 2020", "iDLG: improved deep leakage from gradients. arXiv:2001.02610."),
    "ig": ("Geiping et al. 2020", "Inverting gradients: how easy is it to break privacy in federated learning? NeurIPS."),
    "cpl": ("Wei et al. 2020", "A framework for evaluating gradient leakage attacks in federated learning (CPL). ESORICS."),
    "dpsgd": ("Abadi et al. 2016", "Deep learning with differential privacy (DP-SGD, moments accountant). ACM CCS."),
    "rdp": ("Mironov 2017", "Rényi differential privacy. IEEE CSF."),
    "prv": ("Gopi, Lee and Wutschitz 2021", "Numerical composition of differential privacy (PRV accountant). NeurIPS."),
    "ssim": ("Wang et al. 2004", "Image quality assessment: from error visibility to structural similarity (SSIM). IEEE TIP."),
    "wilson": ("Newcombe 1998", "Two-sided confidence intervals for the single proportion and interval estimation for the difference between proportions. Statistics in Medicine."),
}


# ----------------------------------------------------------------------------- formatting
def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def fmt_number(v: Any, rate: bool = False) -> str:
    """A cell value as text: rates as percentages, floats to 3-4 significant digits."""
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        f = float(v)
        if math.isnan(f):
            return "&ndash;"
        if math.isinf(f):
            return "&infin;" if f > 0 else "&minus;&infin;"
        if rate and 0.0 <= f <= 1.0:
            pct = 100 * f
            return f"{pct:.2f}%" if 0 < pct < 1 else f"{pct:.1f}%"
        if isinstance(v, int) or (f.is_integer() and 1000 <= abs(f) < 1e9):
            return f"{int(f):,}"
        return f"{f:.3g}" if abs(f) < 1e5 else f"{f:.3e}"
    if isinstance(v, (list, tuple)):
        return esc(", ".join(str(x) for x in v))
    if isinstance(v, dict):
        return esc(", ".join(f"{k}={x}" for k, x in v.items()))
    return esc(v)


# Keys whose meaning depends on the section kind.
KIND_COLUMN_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "evasion": {
        "asr": ("attack success rate (ASR)", "share of the initially correct examples the attack fools"),
        "clean_error": ("clean error", "share of examples misclassified before any attack"),
        "norm": ("norm", "the norm the budget is measured in"),
        "flags": ("flags", "signs of gradient masking: a figure to distrust"),
    },
}


def column_label(key: str, kind: str = "") -> tuple[str, str]:
    """(heading, hover text) for a raw column key; unknown keys get underscores as spaces."""
    if key in KIND_COLUMN_NAMES.get(kind, {}):
        return KIND_COLUMN_NAMES[kind][key]
    if key in COLUMN_NAMES:
        return COLUMN_NAMES[key]
    return key.replace("_", " "), ""


def verdict_class(verdict: str) -> str:
    return {"pass": "v-pass", "warn": "v-warn", "fail": "v-fail"}.get(verdict, "v-nm")


def verdict_badge(verdict: str) -> str:
    return f"<span class='badge {verdict_class(verdict)}'>{esc(verdict)}</span>"


def _row_dict(r: Any) -> dict[str, Any]:
    if is_dataclass(r) and not isinstance(r, type):
        return asdict(r)
    return dict(r)


def scorecard_rows(results: Mapping[str, Any], sections: Sequence[SectionOutput]) -> list[dict[str, Any]]:
    """The run's scorecard: results['scorecard'] when recorded, else the sections' rows."""
    rows = results.get("scorecard")
    if rows:
        return [_row_dict(r) for r in rows]
    out = []
    for sec in sections:
        for r in sec.scorecard:
            d = _row_dict(r)
            d.setdefault("section", sec.name)
            d["section"] = d["section"] or sec.name
            out.append(d)
    return out


def overall_verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    """Worst verdict among measured rows: fail > warn > pass; 'not measured' when none."""
    vs = {r.get("verdict") for r in rows}
    for v in ("fail", "warn", "pass"):
        if v in vs:
            return v
    return "not measured"


# Scorecard metrics in [0, 1] that are scores, not rates: shown as plain numbers.
SCORE_WORDS = ("ssim", "auc", "psnr", "advantage", "confidence")


def is_rate(row: Mapping[str, Any]) -> bool:
    """Whether a scorecard row's value is a rate (shown as a percentage)."""
    metric = str(row.get("metric", "")).lower()
    return not (row.get("unit") or "") and not any(w in metric for w in SCORE_WORDS)


def format_value(row: Mapping[str, Any]) -> str:
    """A scorecard value with its unit and 95% CI."""
    v, unit = row.get("value"), row.get("unit") or ""
    if v is None:
        return "&ndash;"
    rate = is_rate(row)
    text = fmt_number(v, rate=rate) + (f" {esc(unit)}" if unit and unit != "eps" else "")
    if unit == "eps":
        text = f"&epsilon; = {fmt_number(v)}"
    ci = row.get("ci")
    if ci and len(ci) == 2 and ci[0] is not None and ci[1] is not None:
        text += (f"<br><span class='ci'>95% CI {fmt_number(ci[0], rate)} &ndash; "
                 f"{fmt_number(ci[1], rate)}</span>")
    return text


def format_threshold(row: Mapping[str, Any]) -> str:
    t = row.get("threshold")
    if t is None:
        return "&ndash;"
    rel = "&ge;" if row.get("higher_is_better", True) else "&le;"
    unit = row.get("unit") or ""
    return f"{rel} {fmt_number(t, rate=is_rate(row))}" + (f" {esc(unit)}" if unit and unit != "eps" else "")


# ----------------------------------------------------------------------------- blocks
def scorecard_html(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ("<p class='note'>No verdicts recorded for this run: the tables below hold the "
                "measurements, without a threshold to judge them against.</p>")
    head = ("<tr><th class='l'>threat</th><th class='l'>metric</th><th>value</th><th>pass if</th>"
            "<th class='l'>verdict</th><th class='l'>what it means</th></tr>")
    body = []
    for r in rows:
        meaning = esc(r.get("meaning", ""))
        if r.get("note"):
            meaning += f"<br><span class='ci'>{esc(r['note'])}</span>"
        body.append(f"<tr><td class='l'>{esc(r.get('threat', ''))}</td><td class='l'>{esc(r.get('metric', ''))}"
                    f"</td><td>{format_value(r)}</td><td>{format_threshold(r)}</td>"
                    f"<td class='l'>{verdict_badge(str(r.get('verdict', 'not measured')))}</td>"
                    f"<td class='meaning'>{meaning}</td></tr>")
    return f"<div class='tw'><table class='score' id='scorecard'>{head}{''.join(body)}</table></div>"


NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}


def evasion_norms(sec_cfg: Mapping[str, Any]) -> dict[str, str]:
    """Attack label -> the norm its budgets are in, for one evasion section's config."""
    from bastion.audit.evasion_section import AttackSpec, _build, _label, _norm_of
    from bastion.core import BastionError

    out = {}
    for a in _items(sec_cfg.get("attacks")):
        try:
            spec = AttackSpec.model_validate(a)
            out[_label(spec)] = NORM_NAMES.get(_norm_of(_build(spec, None)), "")
        except (BastionError, ValueError, TypeError):
            continue
    return out


def table_html(t: ReportTable | Mapping[str, Any], kind: str = "", norms: Mapping[str, str] | None = None) -> str:
    """A section table: human headings (units on hover), rates as percentages, empty
    columns left out, caption under it. `norms` (attack label -> norm) adds the norm to
    each evasion budget."""
    if isinstance(t, Mapping):
        title, columns, rows, caption = t["title"], list(t["columns"]), list(t["rows"]), t.get("caption", "")
    else:
        title, columns, rows, caption = t.title, list(t.columns), list(t.rows), t.caption
    keep = [i for i, c in enumerate(columns) if any(i < len(r) and r[i] is not None for r in rows)
            or not rows]
    dropped = [columns[i] for i in range(len(columns)) if i not in keep]
    if "norm" in columns:  # the table states the norm itself
        norms = None
    key = [i for i in keep[:4] if columns[i] in KEY_COLUMNS]
    rest = [i for i in keep if i not in key]
    per = max(1, MAX_TABLE_COLUMNS - len(key))
    chunks = [rest[j:j + per] for j in range(0, len(rest), per)] or [[]]
    cap = caption or DEFAULT_CAPTIONS.get(kind, "")
    if dropped:
        cap += (" " if cap else "") + "Not measured here: " + ", ".join(column_label(c, kind)[0] for c in dropped) + "."
    parts = []
    for j, chunk in enumerate(chunks):
        head = title if j == 0 else f"{title} (continued)"
        parts.append(_table_part(head, columns, rows, key + chunk, kind, norms,
                                 cap if j == len(chunks) - 1 else ""))
    return "".join(parts)


# A wide table is split into parts that repeat its key columns, so each fits the page.
MAX_TABLE_COLUMNS = 9
KEY_COLUMNS = {"attack", "norm", "eps", "init", "defense"}


def _table_part(title: str, columns: list[str], rows: list[list[Any]], keep: list[int], kind: str,
                norms: Mapping[str, str] | None, caption: str) -> str:
    heads = []
    for i in keep:
        label, tip = column_label(columns[i], kind)
        cls = " class='l'" if columns[i] in LEFT_COLUMNS else ""
        tip_attr = f" title='{esc(tip)}'" if tip else ""
        heads.append(f"<th{cls}{tip_attr}>{esc(label)}</th>")
    body = []
    for r in rows:
        cells = []
        for i in keep:
            c = columns[i]
            v = r[i] if i < len(r) else None
            if c == "eps" and v is None and kind == "evasion":
                text = "min-norm"
            elif c == "eps" and kind == "evasion" and norms and r and norms.get(str(r[0])):
                text = f"{fmt_number(v)} {esc(norms[str(r[0])])}"
            else:
                text = fmt_number(v, rate=c in RATE_COLUMNS)
            cells.append(f"<td class='l'>{text}</td>" if c in LEFT_COLUMNS else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap_html = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f"<h3>{esc(title)}</h3><div class='tw'><table>{cap_html}<tr>{''.join(heads)}</tr>"
            f"{''.join(body)}</table></div>")


def section_title(sec: SectionOutput) -> str:
    base = KIND_TITLES.get(sec.kind, sec.kind)
    if sec.name in (sec.kind, "", None):
        return base
    return f"{base}: {sec.name}"


def section_anchor(sec: SectionOutput) -> str:
    return "sec-" + "".join(c if c.isalnum() else "-" for c in sec.name)


def _summary_notes(sec: SectionOutput) -> list[str]:
    """Notes the section recorded, plus a few facts from older runs' summaries."""
    notes = list(sec.notes)
    if sec.kind == "dp" and sec.summary.get("private") is False and sec.summary.get("note"):
        notes.append(str(sec.summary["note"]) + ": no differential-privacy guarantee (epsilon = infinity).")
    return notes


def section_html(sec: SectionOutput, sec_cfg: Mapping[str, Any] | None = None) -> str:
    norms = evasion_norms(sec_cfg) if sec.kind == "evasion" and sec_cfg else None
    parts = [f"<h2 id='{section_anchor(sec)}'>{esc(section_title(sec))}</h2>"]
    threat = sec.threat_model or DEFAULT_THREAT.get(sec.kind, "")
    if threat:
        parts.append(f"<div class='threat'><b>Threat model.</b> {esc(threat)}</div>")
    tm = sec.summary.get("threat_model") if sec.kind == "membership" else None
    if isinstance(tm, Mapping):
        parts.append(_membership_setup(tm))
    for note in _summary_notes(sec):
        parts.append(f"<div class='note'><b>Note.</b> {esc(note)}</div>")
    for t in sec.tables:
        parts.append(table_html(t, sec.kind, norms))
    if sec.figures:
        figs = []
        for f in sec.figures:
            b64 = base64.b64encode(f.png).decode()
            figs.append(f"<figure><img alt='{esc(f.title)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>")
        parts.append(f"<div class='figs'>{''.join(figs)}</div>")
    advice = sec.advice or DEFAULT_ADVICE.get(sec.kind, "")
    if advice:
        parts.append(f"<div class='advice'><b>What this means, what to try.</b> {esc(advice)}</div>")
    return "\n".join(parts)


def _membership_setup(tm: Mapping[str, Any]) -> str:
    cand = tm.get("candidates") or {}
    shadow = tm.get("shadow_training") or {}
    items = [("candidates", f"{cand.get('members', '?')} members, {cand.get('nonmembers', '?')} non-members"
              if cand else None),
             ("shadow / reference models", tm.get("shadows")),
             ("attacker's data", tm.get("attacker_data")),
             ("attacker's pool", tm.get("pool_size")),
             ("augmentation", tm.get("augment")),
             ("shadow training", (f"{shadow.get('trained', 0)} trained, {shadow.get('loaded_from_cache', 0)} "
                                  f"reused, method {shadow.get('method')}") if shadow else None)]
    return _kv([(k, v) for k, v in items if v is not None])


def _kv(items: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<dt>{esc(k)}</dt><dd>{fmt_number(v) if not isinstance(v, str) else esc(v)}</dd>"
                   for k, v in items)
    return f"<dl class='kv'>{body}</dl>"


def _items(v: Any) -> list[Any]:
    """A config value as a list (configs accept a scalar for a one-element list)."""
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _num_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _attack_params(sec_cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, parameters as run) for one configured section."""
    kind = sec_cfg.get("kind")
    skip = {"kind", "name", "attacks"}
    out = []
    if kind == "evasion":
        for a in _items(sec_cfg.get("attacks")):
            if not isinstance(a, Mapping):
                out.append((str(a), "defaults"))
                continue
            bits = []
            if a.get("eps") is not None:
                bits.append("budgets " + ", ".join(_num_text(e) for e in _items(a["eps"])))
            if a.get("targeted"):
                bits.append(f"targeted ({a['targeted']})")
            params = a.get("params")
            for k, v in (params.items() if isinstance(params, Mapping) else []):
                bits.append(f"{k}={v}")
            out.append((a.get("label") or a.get("attack", "?"), "; ".join(bits) or "defaults"))
        return out
    bits = []
    if sec_cfg.get("attacks"):
        bits.append("attacks " + ", ".join(str(a) for a in _items(sec_cfg["attacks"])))
    for k, v in sec_cfg.items():
        if k in skip or v is None:
            continue
        bits.append(f"{k}={', '.join(map(str, v)) if isinstance(v, list) else v}")
    return [(str(kind), "; ".join(bits) or "defaults")]


def run_details_html(results: Mapping[str, Any]) -> str:
    cfg = results.get("config") or {}
    dcfg = cfg.get("data") or {}
    data = results.get("data") or {}
    model = results.get("model") or {}
    versions = results.get("versions") or {}
    steps = results.get("steps") or {}
    items = [
        ("model", f"{model.get('name', '?')} ({model.get('arch') or 'architecture not recorded'}, "
                  f"{model.get('num_classes', '?')} classes)"),
        ("checkpoint", model.get("checkpoint") or "in-memory model"),
        ("data", f"{data.get('name', '?')}, split {data.get('split', dcfg.get('split', '?'))}, "
                 f"n = {data.get('n', '?')} (first {dcfg.get('n', data.get('n', '?'))} examples"
                 f"{', only those classified correctly' if dcfg.get('only_correct') else ''})"),
        ("clean accuracy", fmt_number(results.get("clean_accuracy"), rate=True)),
        ("recorded test accuracy", fmt_number(model.get("test_accuracy_recorded"), rate=True)),
        ("seed", results.get("seed", cfg.get("seed"))),
        ("batch size", cfg.get("batch_size")),
        ("device", f"{results.get('device', '?')}, {results.get('threads', '?')} intra-op threads"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("steps", f"{steps.get('new', '?')} run, {steps.get('cached', '?')} reused from the run folder"
         if steps else None),
        ("wall time", f"{results['wall_time_s']:.1f} s" if isinstance(results.get("wall_time_s"), (int, float))
         else None),
        ("finished", results.get("finished")),
        ("run id", results.get("run_id")),
    ]
    parts = ["<h2 id='run'>How this run was made</h2>",
             "<dl class='kv'>" + "".join(
                 f"<dt>{esc(k)}</dt><dd>{v if k in ('clean accuracy', 'recorded test accuracy') else esc(v)}</dd>"
                 for k, v in items if v is not None) + "</dl>"]
    rows = []
    for s in cfg.get("sections") or []:
        for label, params in _attack_params(s):
            rows.append(f"<tr><td class='l'>{esc(s.get('name') or s.get('kind'))}</td>"
                        f"<td class='l'>{esc(label)}</td><td class='l'>{esc(params)}</td></tr>")
    if rows:
        parts.append("<h3>Attack parameters as run</h3><div class='tw'><table><tr><th class='l'>section</th>"
                     "<th class='l'>attack</th><th class='l'>parameters</th></tr>" + "".join(rows)
                     + "<caption>Parameters not listed take the attack's defaults (see docs/attacks.md)."
                       "</caption></table></div>")
    return "\n".join(parts)


def used_references(results: Mapping[str, Any], sections: Sequence[SectionOutput]) -> list[tuple[str, str]]:
    """The papers behind the attacks, metrics and guarantees this run used."""
    keys: list[str] = []

    def add(k: str) -> None:
        if k in REFERENCES and k not in keys:
            keys.append(k)

    for s in (results.get("config") or {}).get("sections") or []:
        kind = s.get("kind")
        if kind == "evasion":
            for a in _items(s.get("attacks")):
                name = str(a.get("attack", "")) if isinstance(a, Mapping) else str(a)
                add(name)
                add(name.split("-")[0])
                if name == "autoattack":
                    add("apgd")
                    add("square")
        elif kind == "membership":
            for a in _items(s.get("attacks")) or ["lira", "lira-offline", "rmia", "yeom", "gap"]:
                add(str(a).split("-")[0])
        elif kind == "leakage":
            add(str(s.get("attack", "cpl")))
        elif kind == "dp":
            add("dpsgd")
            add("rdp")
            add("prv")
    for sec in sections:
        if sec.kind == "dp" and sec.summary.get("private"):
            add("dpsgd")
            add("rdp")
        cols = {c for t in sec.tables for c in t.columns}
        if "ssim" in cols:
            add("ssim")
    add("wilson")
    return [REFERENCES[k] for k in keys]


def glossary_html() -> str:
    body = "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in GLOSSARY)
    return f"<h2 id='glossary'>Glossary</h2><dl class='gloss'>{body}</dl>"


def references_html(refs: Sequence[tuple[str, str]]) -> str:
    items = "".join(f"<li><b>{esc(a)}</b>. {esc(t)}</li>" for a, t in refs)
    return f"<h2 id='references'>References</h2><ol class='refs'>{items}</ol>"


def page(title: str, body: str, run_id: str = "") -> str:
    """A complete HTML document around `body` with the report's CSS (reused by comparisons)."""
    meta = f"<meta name='bastion-run-id' content='{esc(run_id)}'>" if run_id else ""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title>{meta}<style>{CSS}</style></head><body>\n{body}\n</body></html>")


def render(results: dict[str, Any], sections: list[SectionOutput]) -> str:
    """The audit's report.html for `results` (results.json's content) and the sections'
    outputs (tables and figures)."""
    m = results.get("model") or {}
    d = results.get("data") or {}
    rows = scorecard_rows(results, sections)
    overall = results.get("verdict") if results.get("verdict") in VERDICTS else overall_verdict(rows)
    counts = {v: sum(1 for r in rows if r.get("verdict") == v) for v in VERDICTS}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    name = m.get("name", "model")
    head = [
        f"<h1>Bastion security audit: {esc(name)}</h1>",
        f"<p class='meta'>{esc(d.get('name', '?'))} {esc(d.get('split', ''))}, {fmt_number(d.get('n'))} examples; "
        f"clean accuracy {fmt_number(results.get('clean_accuracy'), rate=True)}; seed {esc(results.get('seed', '?'))}; "
        f"{esc(results.get('device', '?'))}; finished {esc(results.get('finished', '?'))}</p>",
        f"<div class='top'><span class='overall {verdict_class(overall)}' "
        f"id='overall'>Overall verdict: {esc(overall)}</span>"
        f"<span class='meta'>{esc(tally) if tally else 'no verdicts recorded'}. The overall verdict is "
        f"the worst among the measured threats.</span></div>",
        scorecard_html(rows),
    ]
    nav = ["<nav>" + "".join(f"<a href='#{section_anchor(s)}'>{esc(section_title(s))}</a>" for s in sections)
           + "<a href='#run'>how this run was made</a><a href='#glossary'>glossary</a>"
             "<a href='#references'>references</a></nav>"]
    cfgs = {c.get("name"): c for c in (results.get("config") or {}).get("sections") or [] if isinstance(c, Mapping)}
    body = [*head, *nav, *(section_html(s, cfgs.get(s.name)) for s in sections), run_details_html(results),
            glossary_html(),
            references_html(used_references(results, sections)),
            "<p class='meta'>All figures, per-example outcomes and the configuration: "
            "<code>results.json</code> and <code>steps/</code> next to this file. Compare two runs "
            "with <code>bastion compare RUN_A RUN_B</code>.</p>"]
    return page(f"Bastion audit: {name}", "\n".join(body), str(results.get("run_id", "")))


__all__ = ["CSS", "ScoreRow", "overall_verdict", "page", "render", "scorecard_rows", "table_html"]
