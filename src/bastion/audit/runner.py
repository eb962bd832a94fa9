"""Run an audit: validate everything, run each section (resumably), write results.json and
report.html atomically at the end."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bastion.audit.config import AuditConfig
from bastion.audit.report import render
from bastion.audit.sections import AuditContext, SectionOutput, get_section, validate_section
from bastion.audit.store import RunStore, atomic_write, model_fingerprint
from bastion.core import Classifier, ConfigError, resolve_device, seed_everything
from bastion.data import load
from bastion.data.dataset import Dataset
from bastion.models.checkpoint import library_versions, load_classifier


@dataclass
class AuditRun:
    out_dir: Path
    results: dict[str, Any]
    sections: list[SectionOutput]
    cached_steps: int
    new_steps: int


def _select(model: Classifier, data: Dataset, n: int, only_correct: bool) -> Dataset:
    if only_correct:
        pred = model.predict(data.x).cpu()
        idx = torch.nonzero(pred == data.y).flatten()[:n]
        return data.subset(idx)
    return data.take(n)


def run_audit(model: Classifier | str | Path, cfg: AuditConfig, out_dir: str | Path,
              data: str | None = None, device: str = "auto", root: str | Path | None = None) -> AuditRun:
    """Audit `model` (a Classifier or a checkpoint path) as configured; outputs go to
    `out_dir`. Finished steps found in `out_dir` are reused (resume)."""
    started = time.perf_counter()
    dev = resolve_device(device)
    checkpoint = None
    if not isinstance(model, Classifier):
        checkpoint = Path(model)
        model = load_classifier(checkpoint, device=dev)
    model.eval()
    data_name = cfg.data.name or data or model.meta.get("dataset")
    if data_name is None:
        raise ConfigError("no data set: pass --data or set data.name in the config")
    root = cfg.data.root or root
    test_full = load(data_name, cfg.data.split, root=root)
    if tuple(test_full.input_shape) != model.spec.shape:
        raise ConfigError(f"data {data_name!r} has inputs of shape {test_full.input_shape}, the model "
                          f"expects {model.spec.shape}")
    sections = cfg.section_dicts()
    if model.meta.get("privacy") and not any(s["kind"] == "dp" for s in sections):
        # a DP-trained checkpoint always gets its privacy block (parameters, epsilon spent)
        names = {s["name"] for s in sections}
        sections.append({"kind": "dp", "name": "dp" if "dp" not in names else "privacy"})
    for s in sections:
        validate_section(s["kind"], s)
    train = load(data_name, "train", root=root) if cfg.data.split != "train" else test_full
    seed_everything(cfg.seed)
    test = _select(model, test_full, cfg.data.n, cfg.data.only_correct)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = RunStore(out, model_fingerprint(model))
    ctx = AuditContext(model=model, train=train, test=test, out_dir=out, seed=cfg.seed,
                       checkpoint=checkpoint, meta=dict(model.meta), step=store.step,
                       save_tensors=store.save_tensors, load_tensors=store.load_tensors)
    clean = model.accuracy(test.x, test.y)
    outputs: list[SectionOutput] = []
    for s in sections:
        seed_everything(cfg.seed)
        outputs.append(get_section(s["kind"])(ctx, s))
    results = {
        "config": cfg.model_dump(),
        "seed": cfg.seed,
        "device": str(dev),
        "versions": library_versions(),
        "model": {"checkpoint": None if checkpoint is None else str(checkpoint), "name": model.name,
                  "arch": model.meta.get("arch"), "num_classes": model.num_classes,
                  "input_spec": model.spec.to_dict(),
                  "test_accuracy_recorded": model.meta.get("test_accuracy"),
                  "privacy": model.meta.get("privacy")},
        "data": {"name": data_name, "split": cfg.data.split, "n": len(test)},
        "clean_accuracy": clean,
        "sections": {o.name: {"kind": o.kind, "summary": o.summary,
                              "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows}
                                         for t in o.tables]} for o in outputs},
        "steps": {"cached": store.hits, "new": store.misses},
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - started,
    }
    text = json.dumps(results, indent=2, default=str, allow_nan=True)
    html_text = render(results, outputs)
    atomic_write(out / "results.json", text)
    atomic_write(out / "report.html", html_text)
    return AuditRun(out, results, outputs, store.hits, store.misses)
