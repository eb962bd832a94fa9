"""Run an audit: validate everything (config, checkpoint, data, every section) before the
run folder is touched, lock the folder, run each section (resumably), then replace
results.json and report.html as a pair."""

from __future__ import annotations

import datetime as dt
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bastion.audit.config import AuditConfig
from bastion.audit.report import render
from bastion.audit.scorecard import row_dict, scorecard_block
from bastion.audit.sections import AuditContext, SectionOutput, get_section, validate_section
from bastion.audit.store import LOCK_NAME, RunStore, model_fingerprint, run_lock, tensor_digest
from bastion.core import BastionError, Classifier, ConfigError, resolve_device, seed_everything
from bastion.data import load
from bastion.data.dataset import Dataset
from bastion.fileio import atomic_write, fsync_dir, os_error, probe_writable, strict_json
from bastion.models.checkpoint import library_versions
from bastion.models.loading import ModelSource, load_model
from bastion.progress import task
from bastion.threads import ThreadChoice
from bastion.threads import choose as choose_threads
from bastion.threads import using as using_threads


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


@dataclass
class _Prepared:
    """Everything an audit needs, loaded and validated; nothing written yet."""

    model: Classifier
    checkpoint: Path | None
    device: torch.device
    data_name: str
    root: str | Path | None
    train: Dataset
    test: Dataset
    sections: list[dict[str, Any]]
    threads: ThreadChoice | None = None


def _prepare(model: Classifier | ModelSource | str | Path, cfg: AuditConfig,
             data: str | Dataset | tuple[Dataset | None, Dataset] | None, device: str,
             root: str | Path | None) -> _Prepared:
    """Load and check the model (a Classifier, a ModelSource, or a checkpoint path) and
    the data (a registry name, or in-memory: one Dataset to evaluate on, or a pair
    (train, test) where train may be None) and validate every section."""
    dev = resolve_device(device)
    checkpoint = None
    if not isinstance(model, Classifier):
        src = model if isinstance(model, ModelSource) else ModelSource(model)
        if src.kind == "checkpoint":
            checkpoint = Path(src.model)
        model = load_model(src, device=dev)
    model.eval()
    given: tuple[Dataset | None, Dataset] | None = None
    if isinstance(data, Dataset):
        given = (None, data)
    elif isinstance(data, tuple):
        given = data
    if given is not None:
        if cfg.data.name:
            raise ConfigError(f"the config names data set {cfg.data.name!r} and data was passed in memory; "
                              "drop one")
        test_full = given[1]
        data_name = test_full.name or "data"
        root = None
    else:
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
    if given is not None:
        if given[0] is None and any(s["kind"] == "membership" for s in sections):
            raise ConfigError("a membership section needs the model's training data (its members): pass "
                              "train= as well as the evaluation data")
        train = given[0] if given[0] is not None else test_full
        if tuple(train.input_shape) != model.spec.shape:
            raise ConfigError(f"training data has inputs of shape {train.input_shape}, the model expects "
                              f"{model.spec.shape}")
    else:
        train = load(data_name, "train", root=root) if cfg.data.split != "train" else test_full
    seed_everything(cfg.seed)
    test = _select(model, test_full, cfg.data.n, cfg.data.only_correct)
    return _Prepared(model, checkpoint, dev, data_name, root, train, test, sections)


def run_context(p: _Prepared, cfg: AuditConfig) -> dict[str, Any]:
    """Everything outside a step's own parameters that determines its result: hashed into
    every step's cache key (see bastion.audit.store)."""
    versions = library_versions()
    return {
        "model": model_fingerprint(p.model), "input_spec": p.model.spec.to_dict(),
        "data": {"name": str(p.data_name), "split": cfg.data.split, "n": cfg.data.n,
                 "only_correct": cfg.data.only_correct,
                 "root": None if p.root is None else str(Path(p.root).resolve())},
        "test": tensor_digest(p.test.x, p.test.y), "train": tensor_digest(p.train.x, p.train.y),
        "seed": cfg.seed, "batch_size": cfg.batch_size, "device": p.device.type,
        "versions": {"bastion": versions["bastion"], "torch": versions["torch"]},
    }


def _holds_work(out: Path) -> bool:
    """Whether `out` holds any file worth keeping (a finished step, a shadow model, ...)."""
    return any(f.is_file() and f.name != LOCK_NAME for f in out.rglob("*"))


def run_audit(model: Classifier | str | Path, cfg: AuditConfig, out_dir: str | Path,
              data: str | None = None, device: str = "auto", root: str | Path | None = None,
              wait: bool = False, threads: int | None = None,
              progress: bool | None = None, engine: str = "local",
              address: str | None = None) -> AuditRun:
    """Audit `model` (a Classifier or a checkpoint path) as configured; outputs go to
    `out_dir`. Finished steps found in `out_dir` are reused (resume) when their whole key
    matches. Another audit writing into `out_dir` makes this raise DataError, or with
    `wait` wait for it. A failure before any step finished removes the folder again when
    this call created it. `threads`: intra-op CPU threads (None = measured, see
    bastion.threads); `progress`: report each step on stderr (None = on a terminal).
    `engine='ray'` runs the steps as Ray tasks first (`bastion.scale.audit`; `address`:
    an existing cluster, default a local one), then builds the report as a local run."""
    started = time.perf_counter()
    cluster = None
    if engine != "local" or address is not None:
        from bastion.scale.engine import check_engine, connect

        check_engine(engine, address)
        cluster = connect(address)  # a missing extra or an unreachable cluster fails before any work
    prep = _prepare(model, cfg, data, device, root)
    if cluster is not None and prep.device.type != "cpu":
        raise ConfigError("the Ray engine runs audit steps on CPU workers; use --device cpu")
    prep.threads = choose_threads(prep.model, prep.test.x, threads, cfg.batch_size)
    out = Path(out_dir)
    created = probe_writable(out)
    with run_lock(out, wait=wait):
        try:
            with using_threads(prep.threads.threads), \
                    task("audit", planned_steps(prep.sections), progress, interval=0) as bar:
                dispatched = None
                if cluster is not None:
                    from bastion.scale.audit import dispatch_steps

                    store = RunStore(out, run_context(prep, cfg))
                    store.remove_stale_temps()
                    dispatched = {**cluster.to_dict(), **dispatch_steps(prep, cfg, store)}
                return _execute(prep, cfg, out, started, bar, dispatched)
        except BaseException:
            if created is not None and not _holds_work(out):
                shutil.rmtree(created, ignore_errors=True)
            raise


def _execute(prep: _Prepared, cfg: AuditConfig, out: Path, started: float, bar: Any = None,
             ray_run: dict[str, Any] | None = None) -> AuditRun:
    model, test = prep.model, prep.test
    context = run_context(prep, cfg)
    store = RunStore(out, context)
    store.remove_stale_temps()

    remote = set(ray_run["dispatched"]) if ray_run else set()
    remote_hits = 0

    def step(key: str, fn: Any) -> Any:  # store.step, reporting each finished step
        nonlocal remote_hits
        hits = store.hits
        value = store.step(key, fn)
        remote_hits += int(key in remote and store.hits > hits)
        if bar is not None:
            bar.advance(1, info=step_label(key), cached=store.hits > hits)
        return value

    ctx = AuditContext(model=model, train=prep.train, test=test, out_dir=out, seed=cfg.seed,
                       checkpoint=prep.checkpoint, meta=dict(model.meta), step=step,
                       save_tensors=store.save_tensors, load_tensors=store.load_tensors,
                       batch_size=cfg.batch_size, thresholds=cfg.thresholds)
    clean = model.accuracy(test.x, test.y)
    outputs: list[SectionOutput] = []
    try:
        for s in prep.sections:
            seed_everything(cfg.seed)
            outputs.append(get_section(s["kind"])(ctx, s))
    except BastionError:
        raise
    except OSError as e:
        raise os_error(out, e, "audit failed on") from None
    run_id = uuid.uuid4().hex
    results = {
        **scorecard_block(outputs),
        "run_id": run_id,
        "config": cfg.model_dump(),
        "seed": cfg.seed,
        "device": str(prep.device),
        "threads": torch.get_num_threads(),
        "threads_policy": prep.threads.policy if prep.threads else "torch default",
        "threads_detail": prep.threads.detail if prep.threads else "",
        "versions": library_versions(),
        "model": {"checkpoint": None if prep.checkpoint is None else str(prep.checkpoint),
                  "name": model.name, "arch": model.meta.get("arch"), "num_classes": model.num_classes,
                  **{k: model.meta[k] for k in ("entry_point", "entry_args", "weights", "exported_program")
                     if model.meta.get(k) is not None},
                  "input_spec": model.spec.to_dict(),
                  "test_accuracy_recorded": model.meta.get("test_accuracy"),
                  "privacy": model.meta.get("privacy")},
        "data": {"name": prep.data_name, "split": cfg.data.split, "n": len(test)},
        "clean_accuracy": clean,
        "sections": {o.name: {"kind": o.kind, "summary": o.summary,
                              "scorecard": [row_dict(r) for r in o.scorecard],
                              "threat_model": o.threat_model, "advice": o.advice, "notes": o.notes,
                              "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows,
                                          "caption": t.caption} for t in o.tables]} for o in outputs},
        # steps a Ray task ran for this call count as new, as in a local run
        "steps": {"cached": store.hits - remote_hits, "new": store.misses + remote_hits,
                  "corrupt_recomputed": store.corrupt},
        "cache_context": context,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - started,
    }
    if ray_run is not None:
        results["engine"] = {"name": "ray", **{k: v for k, v in ray_run.items() if k != "dispatched"},
                             "steps_on_ray": len(ray_run["dispatched"])}
    write_outputs(out, strict_json(results), render(results, outputs))
    return AuditRun(out, results, outputs, store.hits - remote_hits, store.misses + remote_hits)


def planned_steps(sections: list[dict[str, Any]]) -> int | None:
    """How many cached steps the sections will run (None when a section's count is not
    known in advance): the progress total."""
    total = 0
    for s in sections:
        if s["kind"] == "evasion":
            from bastion.attacks import registry
            from bastion.attacks.base import MINIMUM_NORM
            from bastion.audit.evasion_section import _parse as parse_evasion

            total += sum(1 if registry.get(a.attack).kind == MINIMUM_NORM else len(a.eps or [])
                         for a in parse_evasion(s).attacks)
        elif s["kind"] == "leakage":
            from bastion.audit.leakage_section import _parse as parse_leakage

            spec = parse_leakage(s)
            total += len(spec.inits) * len(spec.defenses)
        elif s["kind"] == "membership":
            total += 1
        elif s["kind"] != "dp":
            return None
    return total or None


def step_label(key: str) -> str:
    """'evasion/pgd/eps=0.1/{...}/n=200/seed=0' -> 'evasion pgd eps=0.1'."""
    parts: list[str] = []
    for p in key.split("/")[:4]:
        if p.startswith(("{", "[", "n=", "seed=")):
            break
        parts.append(p)
    return " ".join(parts)


def write_outputs(out: Path, results_text: str, report_text: str) -> None:
    """Replace results.json and report.html as a pair: the old pair is removed first, the
    report written next, results.json last. results.json present therefore means a
    finished run whose report.html carries the same run id; a kill in between leaves
    no results.json rather than a mismatched pair."""
    paths = (out / "results.json", out / "report.html")
    try:
        for p in paths:
            p.unlink(missing_ok=True)
        fsync_dir(out)
        atomic_write(paths[1], report_text)
        atomic_write(paths[0], results_text)
    except OSError as e:
        raise os_error(out, e) from None
