"""The audit run folder: cache keys that cover the whole run context, corrupt cache files,
paired outputs, strict JSON, the folder lock, unwritable folders, no half-written folders,
and the config's batch_size."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bastion.audit import parse_config, run_audit
from bastion.audit import runner as runner_mod
from bastion.audit import sections as sections_mod
from bastion.audit import store as store_mod
from bastion.audit.sections import SectionOutput
from bastion.cli.main import run as cli
from bastion.core import BastionError, ConfigError, DataError
from bastion.data import load
from bastion.models import save_classifier

TIMES = ("time_per_example_s", "wall_time_s", "time_s", "seconds_per_attack")
BASE = {"data": {"n": 24}, "sections": [{"kind": "evasion", "attacks": [
    {"attack": "fgsm", "eps": [0.1, 0.3]},
    {"attack": "pgd", "eps": [0.3], "params": {"steps": 3, "alpha": 0.1}},
]}]}


@pytest.fixture(autouse=True)
def no_plots(monkeypatch) -> None:
    """Rendering PNGs is most of a small audit's time and is tested in test_audit.py."""
    from bastion.audit import evasion_section
    monkeypatch.setattr(evasion_section, "_grid_png", lambda t, names: b"png")
    monkeypatch.setattr(evasion_section.plots, "robustness_figure", lambda *a, **k: None)
    monkeypatch.setattr(evasion_section, "fig_to_png", lambda fig: b"png")


def figures(res: dict[str, Any]) -> Any:
    """The sections' figures of a results dict, wall times left out."""
    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in TIMES}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    secs = strip(res["sections"])
    for s in secs.values():  # table rows carry times by position: keep the non-time columns
        for t in s.get("tables", []):
            keep = [i for i, c in enumerate(t["columns"]) if c not in TIMES]
            t["rows"] = [[r[i] for i in keep] for r in t["rows"]]
            t["columns"] = [t["columns"][i] for i in keep]
    return {"clean": res["clean_accuracy"], "data": res["data"], "sections": secs}


def cfg(**data: Any) -> Any:
    raw = json.loads(json.dumps(BASE))
    raw["data"].update(data)
    return parse_config(raw)


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("ckpt") / "small.st", small_model, dataset="mnist-5k")


@pytest.fixture(scope="module")
def baseline(ckpt: Path, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("base") / "run"
    run = run_audit(ckpt, cfg(), out)
    assert run.new_steps == 3 and run.cached_steps == 0
    return out, run.results


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# 1. the cache key covers the data set, split, selection and root ------------------------

@pytest.mark.parametrize("change", [{"n": 16}, {"only_correct": True}, {"split": "train"},
                                    {"name": "digits-as-mnist"}])
def test_changed_data_recomputes_every_step(ckpt: Path, baseline, tmp_path: Path, change) -> None:
    out = tmp_path / "run"
    shutil.copytree(baseline[0], out)
    if change.get("name") == "digits-as-mnist":
        # same name and size, other examples: only the tensor hash tells them apart
        test = load("mnist-5k", "test")
        np.savez(tmp_path / "a.npz", x=test.x[:120, 0].numpy(), y=test.y[:120].numpy())
        np.savez(tmp_path / "b.npz", x=test.x[120:240, 0].numpy(), y=test.y[120:240].numpy())
        c_a, c_b = cfg(name="npz", root=str(tmp_path / "a.npz")), cfg(name="npz", root=str(tmp_path / "b.npz"))
        first = run_audit(ckpt, c_a, out)
        assert first.new_steps == 3
        (tmp_path / "a.npz").unlink()
        shutil.copy(tmp_path / "b.npz", tmp_path / "a.npz")  # same root path, new contents
        again = run_audit(ckpt, c_a, out)
        fresh = run_audit(ckpt, c_b, tmp_path / "fresh")
    else:
        again = run_audit(ckpt, cfg(**change), out)
        fresh = run_audit(ckpt, cfg(**change), tmp_path / "fresh")
    assert again.cached_steps == 0 and again.new_steps == 3
    assert figures(again.results) == figures(fresh.results)
    if "n" in change or "only_correct" in change:
        assert figures(again.results) != figures(baseline[1])


def test_npz_root_change_recomputes(ckpt: Path, tmp_path: Path) -> None:
    test = load("mnist-5k", "test")
    for name, sl in (("a", slice(0, 120)), ("b", slice(120, 240))):
        np.savez(tmp_path / f"{name}.npz", x=test.x[sl, 0].numpy(), y=test.y[sl].numpy())
    out = tmp_path / "run"
    run_audit(ckpt, cfg(name="npz", root=str(tmp_path / "a.npz")), out)
    again = run_audit(ckpt, cfg(name="npz", root=str(tmp_path / "b.npz")), out)
    assert again.cached_steps == 0 and again.new_steps == 3
    same = run_audit(ckpt, cfg(name="npz", root=str(tmp_path / "b.npz")), out)
    assert same.cached_steps == 3 and same.new_steps == 0


def test_cache_context_names_everything(baseline) -> None:
    ctx = baseline[1]["cache_context"]
    assert {"model", "input_spec", "data", "test", "train", "seed", "batch_size", "device",
            "versions"} <= ctx.keys()
    assert ctx["data"] == {"name": "mnist-5k", "split": "test", "n": 24, "only_correct": False, "root": None}
    assert {"bastion", "torch"} <= ctx["versions"].keys()


# 2. a corrupt cache file is reported and recomputed ---------------------------------------

def _first_step(out: Path) -> tuple[Path, dict[str, Any]]:
    path = sorted((out / "steps").glob("*.json"))[0]
    return path, json.loads(path.read_text())


def _corrupt(out: Path, how: str) -> None:
    path, rec = _first_step(out)
    tensor = out / "tensors" / (path.stem + ".safetensors")
    assert tensor.is_file() and rec["tensors"]
    if how == "truncated-json":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "empty-json":
        path.write_bytes(b"")
    elif how == "not-utf8":
        path.write_bytes(b"\xff\xfe{}")
    elif how == "no-value":
        del rec["value"]
        path.write_text(json.dumps(rec))
    elif how == "a-list":
        path.write_text("[1, 2]")
    elif how == "wrong-key":
        rec["key"] = rec["key"] + "/other"
        path.write_text(json.dumps(rec))
    elif how == "bad-checksum":
        rec["value"]["robust_accuracy"] = 0.123
        path.write_text(json.dumps(rec))
    elif how == "empty-tensors":
        tensor.write_bytes(b"")
    elif how == "truncated-tensors":
        tensor.write_bytes(tensor.read_bytes()[:-10])
    elif how == "missing-tensors":
        tensor.unlink()


@pytest.mark.parametrize("how", ["truncated-json", "empty-json", "not-utf8", "no-value", "a-list",
                                 "wrong-key", "bad-checksum", "empty-tensors", "truncated-tensors",
                                 "missing-tensors"])
def test_corrupt_cache_file_is_reported_and_recomputed(ckpt: Path, baseline, tmp_path: Path,
                                                        caplog, how: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(baseline[0], out)
    _corrupt(out, how)
    with caplog.at_level(logging.WARNING, logger="bastion.audit"):
        run = run_audit(ckpt, cfg(), out)
    warned = [r.getMessage() for r in caplog.records if r.name == "bastion.audit"]
    assert len(warned) == 1 and "recomputing" in warned[0] and "\n" not in warned[0], warned
    assert run.cached_steps == 2 and run.new_steps == 1
    assert run.results["steps"]["corrupt_recomputed"] == 1
    assert figures(run.results) == figures(baseline[1])
    again = run_audit(ckpt, cfg(), out)  # the repaired file is reused
    assert again.cached_steps == 3 and again.new_steps == 0


def test_unreadable_tensors_leave_out_a_figure_not_a_traceback(tmp_path: Path, caplog) -> None:
    store = store_mod.RunStore(tmp_path, {"x": 1})
    store.tensors_path("k").parent.mkdir(parents=True)
    store.tensors_path("k").write_bytes(b"\x00" * 5)
    with caplog.at_level(logging.WARNING, logger="bastion.audit"):
        assert store.load_tensors("k") is None
    assert len(caplog.records) == 1


# 3. results.json and report.html as a pair, strict JSON -----------------------------------

def _run_id_of_report(out: Path) -> str:
    html = (out / "report.html").read_text()
    return html.split("name='bastion-run-id' content='")[1].split("'")[0]


def test_outputs_carry_one_run_id(baseline) -> None:
    out, res = baseline
    assert json.loads((out / "results.json").read_text())["run_id"] == _run_id_of_report(out) == res["run_id"]


@pytest.mark.parametrize("fail_on", ["report.html", "results.json"])
def test_kill_between_the_two_writes_leaves_no_mismatched_pair(ckpt: Path, baseline, tmp_path: Path,
                                                                monkeypatch, fail_on: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(baseline[0], out)
    real = runner_mod.atomic_write

    def dying(path, data):
        if Path(path).name == fail_on:
            raise KeyboardInterrupt  # stands in for a kill at this point
        return real(path, data)

    monkeypatch.setattr(runner_mod, "atomic_write", dying)
    with pytest.raises(KeyboardInterrupt):
        run_audit(ckpt, cfg(n=16), out)
    assert not (out / "results.json").exists()  # never a new results.json beside the old report
    if (out / "report.html").exists():
        assert _run_id_of_report(out) != baseline[1]["run_id"]
    monkeypatch.setattr(runner_mod, "atomic_write", real)
    run = run_audit(ckpt, cfg(n=16), out)
    assert json.loads((out / "results.json").read_text())["run_id"] == _run_id_of_report(out) == run.results["run_id"]


def test_results_json_is_strict_with_a_nan_figure(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    def nan_section(ctx, c):
        v = ctx.step("nan/figure", lambda: {"auc": float("nan"), "inf": float("inf")})
        return SectionOutput(name="nan", kind="nan-test", summary=v)

    monkeypatch.setitem(sections_mod.SECTIONS, "nan-test", nan_section)
    out = tmp_path / "run"
    run_audit(ckpt, parse_config({"data": {"n": 8}, "sections": [{"kind": "nan-test"}]}), out)

    def refuse(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")

    res = json.loads((out / "results.json").read_text(), parse_constant=refuse)
    assert res["sections"]["nan"]["summary"] == {"auc": None, "inf": None}
    again = run_audit(ckpt, parse_config({"data": {"n": 8}, "sections": [{"kind": "nan-test"}]}), out)
    assert again.cached_steps == 1  # a NaN inside a step file still round-trips


# 5. one audit per folder at a time --------------------------------------------------------

def _hold_lock(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"424242\n")
    return fd


def _cli_args(ckpt: Path, out: Path, tmp_path: Path, raw: dict | None = None) -> list[str]:
    c = tmp_path / "audit.yaml"
    c.write_text(yaml.safe_dump(raw or BASE))
    return ["audit", "--model", str(ckpt), "--config", str(c), "--out", str(out)]


def test_second_audit_into_a_locked_folder_refuses(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    fd = _hold_lock(out)
    try:
        rc = cli(_cli_args(ckpt, out, tmp_path))
    finally:
        os.close(fd)
    line = one_line_error(capsys)
    assert rc == 2 and str(out) in line and "pid 424242" in line and "--wait" in line
    assert not (out / "steps").exists() and not (out / "results.json").exists()


def test_lock_held_by_another_process(ckpt: Path, tmp_path: Path, capsys) -> None:
    import subprocess
    import sys
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.ftruncate(fd, 0)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\nprint('held', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli(_cli_args(ckpt, out, tmp_path))
    finally:
        holder.kill()
        holder.wait()
    line = one_line_error(capsys)
    assert rc == 2 and f"pid {holder.pid}" in line
    assert cli(_cli_args(ckpt, out, tmp_path)) == 0  # a dead holder's lock is gone with it


def test_wait_waits_for_the_holder(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fd = _hold_lock(out)
    released: list[float] = []

    def release() -> None:
        released.append(time.monotonic())
        os.close(fd)

    threading.Timer(1.0, release).start()
    run = run_audit(ckpt, cfg(), out, wait=True)
    assert released and time.monotonic() > released[0] and run.new_steps == 3


# 6. unwritable --out: one line, exit 2, before any attack ------------------------------------

@pytest.fixture()
def no_attack(monkeypatch) -> list[str]:
    called: list[str] = []
    real = runner_mod.get_section

    def spy(kind: str):
        called.append(kind)
        return real(kind)

    monkeypatch.setattr(runner_mod, "get_section", spy)
    return called


@pytest.mark.parametrize("code,fix", [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full"),
                                      (errno.EACCES, "writable")])
def test_unwritable_out_fails_before_any_attack(ckpt: Path, tmp_path: Path, monkeypatch, capsys,
                                                no_attack, code: int, fix: str) -> None:
    import bastion.fileio as fileio

    def refuse(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fileio.os, "write", refuse)
    out = tmp_path / "run"
    rc = cli(_cli_args(ckpt, out, tmp_path))
    monkeypatch.undo()
    line = one_line_error(capsys)
    assert rc == 2 and str(out) in line and fix in line
    assert no_attack == [] and not out.exists()


def test_out_that_is_a_file_or_runs_through_one(ckpt: Path, tmp_path: Path, capsys, no_attack) -> None:
    f = tmp_path / "file"
    f.write_text("keep me")
    assert cli(_cli_args(ckpt, f, tmp_path)) == 2
    assert "is not a folder" in one_line_error(capsys)
    assert cli(_cli_args(ckpt, f / "sub", tmp_path)) == 2
    assert str(f) in one_line_error(capsys)
    assert cli(_cli_args(ckpt, tmp_path / ("x" * 300), tmp_path)) == 2
    assert "too long for the file system" in one_line_error(capsys)
    assert cli([*_cli_args(ckpt, Path(""), tmp_path)[:-1], ""]) == 2
    assert "--out is empty" in one_line_error(capsys)
    assert f.read_text() == "keep me" and no_attack == []


def test_write_error_during_the_run_is_one_line(ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "atomic_write", full)
    rc = cli(_cli_args(ckpt, tmp_path / "run", tmp_path))
    line = one_line_error(capsys)
    assert rc == 2 and "No space left on device" in line and str(tmp_path / "run") in line


def test_os_error_inside_a_section_is_one_line(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(ctx, c):
        raise PermissionError(errno.EACCES, "Permission denied", str(ctx.out_dir / "shadows"))

    monkeypatch.setitem(sections_mod.SECTIONS, "broken-test", broken)
    with pytest.raises(DataError, match="shadows: Permission denied; make it writable"):
        run_audit(ckpt, parse_config({"data": {"n": 8}, "sections": [{"kind": "broken-test"}]}),
                  tmp_path / "run")


# 7. a bad config leaves no run folder ------------------------------------------------------

BAD = [
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "pgd"}]}]}, ConfigError),
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "pgd", "eps": 0.1,
                                                     "params": {"stepz": 1}}]}]}, ConfigError),
    ({"sections": [{"kind": "membership", "attacks": ["lira"], "shadows": 1}]}, ConfigError),
    ({"sections": [{"kind": "telepathy"}]}, ConfigError),
    ({"data": {"name": "nope"}, "sections": [{"kind": "evasion", "attacks": []}]}, ConfigError),
    ({"data": {"name": "digits"}, "sections": [{"kind": "evasion", "attacks": []}]}, ConfigError),
    ({"data": {"name": "npz", "root": "/nonexistent/x.npz"},
      "sections": [{"kind": "evasion", "attacks": []}]}, DataError),
    ({"data": {"name": "mnist"}, "sections": [{"kind": "evasion", "attacks": []}]}, ConfigError),
    # fails inside the section, at run time, before its first step
    ({"data": {"n": 4}, "sections": [{"kind": "leakage", "attack": "dlg", "batch": 8, "n": 8,
                                      "max_iter": 2}]}, ConfigError),
]


@pytest.mark.parametrize("raw,exc", BAD)
def test_bad_config_leaves_no_folder(ckpt: Path, tmp_path: Path, raw: dict, exc: type) -> None:
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(exc):
        run_audit(ckpt, parse_config(raw), out)
    assert not (tmp_path / "a").exists()


def test_bad_checkpoint_leaves_no_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.st"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BastionError):
        run_audit(bad, parse_config(BASE), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_failure_keeps_an_existing_folder(ckpt: Path, baseline, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(baseline[0], out)
    with pytest.raises(ConfigError):
        run_audit(ckpt, parse_config(BAD[-1][0]), out)
    assert (out / "results.json").is_file() and len(list((out / "steps").glob("*.json"))) == 3


def test_interrupted_first_step_removes_created_folder(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(ctx, c):
        raise KeyboardInterrupt

    monkeypatch.setitem(sections_mod.SECTIONS, "evasion", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_audit(ckpt, cfg(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# 8. the config's batch_size reaches the attacks ---------------------------------------------

def test_batch_size_sets_the_attack_batches(small_model, tmp_path: Path) -> None:
    sizes: list[int] = []
    hook = small_model.register_forward_pre_hook(lambda m, a: sizes.append(int(a[0].shape[0])))
    try:
        raw = {"batch_size": 5, "data": {"n": 20},
               "sections": [{"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1]}]}]}
        run_audit(small_model, parse_config(raw), tmp_path / "small")
        small = list(sizes)
        sizes.clear()
        raw["batch_size"] = 250
        run_audit(small_model, parse_config(raw), tmp_path / "big")
        big = list(sizes)
    finally:
        hook.remove()
    assert small.count(5) >= 4 and 5 not in big
    explicit = {"batch_size": 5, "data": {"n": 20}, "sections": [{"kind": "evasion", "attacks": [
        {"attack": "fgsm", "eps": [0.1], "params": {"batch_size": 10}}]}]}
    sizes.clear()
    hook = small_model.register_forward_pre_hook(lambda m, a: sizes.append(int(a[0].shape[0])))
    try:
        run_audit(small_model, parse_config(explicit), tmp_path / "explicit")
    finally:
        hook.remove()
    assert 10 in sizes and 5 not in sizes  # an attack's own batch_size wins


def test_results_record_thread_count(baseline) -> None:
    """results.json records the thread count the audit ran with and how it was chosen."""
    import os

    res = baseline[1]
    assert res["threads"] >= 1 and res["threads_policy"] in (
        "requested", "OMP_NUM_THREADS", "gpu", "one core", "torch default", "measured")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        assert res["threads_policy"] == "OMP_NUM_THREADS" and res["threads"] == int(os.environ["OMP_NUM_THREADS"])


def test_leakage_split_is_part_of_its_key(ckpt: Path, tmp_path: Path) -> None:
    def leak(split: str) -> Any:
        return parse_config({"data": {"n": 4}, "sections": [
            {"kind": "leakage", "attack": "dlg", "n": 1, "max_iter": 2, "split": split}]})

    out = tmp_path / "run"
    assert run_audit(ckpt, leak("test"), out).new_steps == 1
    moved = run_audit(ckpt, leak("train"), out)
    assert moved.cached_steps == 0 and moved.new_steps == 1
    assert run_audit(ckpt, leak("train"), out).cached_steps == 1


def test_waiter_survives_the_holder_removing_the_folder(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    held = threading.Event()

    def holder() -> None:
        with store_mod.run_lock(out):
            held.set()
            time.sleep(0.5)
            shutil.rmtree(out)  # what a failed first run does with a folder it created

    t = threading.Thread(target=holder)
    out.mkdir()
    t.start()
    held.wait()
    run = run_audit(ckpt, cfg(), out, wait=True)
    t.join()
    assert run.new_steps == 3 and (out / "results.json").is_file() and (out / ".lock").is_file()


def test_batch_size_sets_the_membership_scoring_batches(small_model, tmp_path: Path,
                                                        monkeypatch) -> None:
    import bastion.attacks.privacy.membership.runner as mia_runner

    seen: list[int] = []
    real = mia_runner.compute_signals

    def spy(*args, batch_size: int = 1024, **kw):
        seen.append(batch_size)
        return real(*args, batch_size=batch_size, **kw)

    monkeypatch.setattr(mia_runner, "compute_signals", spy)
    raw = {"batch_size": 7, "data": {"n": 20},
           "sections": [{"kind": "membership", "attacks": ["gap"], "shadows": 0, "eval_size": 20}]}
    run_audit(small_model, parse_config(raw), tmp_path / "mia")
    assert seen and set(seen) == {7}
