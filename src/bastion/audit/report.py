"""Self-contained HTML report: every table and figure inline (PNG as base64), no
external assets, so the file can be mailed or archived as is."""

from __future__ import annotations

import base64
import html
from typing import Any

from bastion.audit.sections import SectionOutput

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #e3e7ef;padding-bottom:.3rem;margin-top:2.2rem}
.meta{color:#5b6475;font-size:.92rem} table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #d9dee8;padding:.35rem .6rem;text-align:right} th{background:#f3f5f9}
td:first-child,th:first-child{text-align:left} figure{margin:1.2rem 0} figcaption{color:#5b6475;font-size:.85rem}
img{max-width:100%} .kv td{text-align:left} code{background:#f3f5f9;padding:0 .25rem}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>"


def render(results: dict[str, Any], sections: list[SectionOutput]) -> str:
    m = results["model"]
    info = [("checkpoint", m.get("checkpoint")), ("architecture", m.get("arch")),
            ("data", f"{results['data']['name']} / {results['data']['split']} (n = {results['data']['n']})"),
            ("clean accuracy", results.get("clean_accuracy")), ("seed", results["seed"]),
            ("device", results["device"]), ("intra-op threads", results.get("threads")),
            ("wall time (s)", results.get("wall_time_s")), ("run id", results.get("run_id")),
            ("versions", ", ".join(f"{k} {v}" for k, v in results["versions"].items()))]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Bastion audit: "
             f"{html.escape(str(m.get('name', 'model')))}</title>"
             f"<meta name='bastion-run-id' content='{html.escape(str(results.get('run_id', '')))}'>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Bastion security audit</h1><p class='meta'>generated {html.escape(results['finished'])}</p>",
             "<table class='kv'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                                            for k, v in info) + "</table>"]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.name)} <small class='meta'>({html.escape(sec.kind)})</small></h2>")
        for t in sec.tables:
            parts.append(_table(t.title, t.columns, t.rows))
        for f in sec.figures:
            b64 = base64.b64encode(f.png).decode()
            parts.append(f"<figure><img alt='{html.escape(f.title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption><b>{html.escape(f.title)}</b>. {html.escape(f.caption)}</figcaption></figure>")
    parts.append("<p class='meta'>Configuration and per-attack figures: <code>results.json</code> "
                 "next to this file.</p></body></html>")
    return "\n".join(parts)
