"""The Ray engine (bastion.scale): shadow models trained partly locally and partly as Ray
tasks equal an all-local run and resume either way; `bastion mia --engine ray` and
`bastion audit --engine ray` give the local results; a missing extra, an old Ray and an
unreachable cluster fail in one line naming what to do."""

from __future__ import annotations

import json
import socket
import sys
import types
from dataclasses import replace
from typing import Any

import pytest
import torch

from bastion.cli.main import run as cli
from bastion.core import ConfigError
from bastion.models import save_classifier
from bastion.scale import engine

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'bastion[scale]')")
TIMES = ("time_per_example_s", "wall_time_s", "time_s", "seconds_per_attack")


@pytest.fixture(scope="module")
def cluster():
    """One small local Ray cluster for this module, stopped afterwards."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'bastion[scale]')")
    engine.shutdown()
    c = engine.connect(num_cpus=2, object_store_mb=128)
    yield c
    engine.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- bad input


def test_missing_extra_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'bastion\[scale\]'"):
        engine.import_ray()


def test_missing_extra_from_the_cli(monkeypatch, trained_model, tmp_path, capsys) -> None:
    ckpt = save_classifier(tmp_path / "t.st", trained_model("mlp", epochs=1, hidden=[32]), dataset="mnist-5k")
    monkeypatch.setitem(sys.modules, "ray", None)
    rc = cli(["mia", "--model", str(ckpt), "--attack", "lira-offline", "--shadows", "2", "--engine", "ray"])
    out = capsys.readouterr()
    assert rc == 2 and "pip install 'bastion[scale]'" in out.out + out.err


def test_old_ray_names_found_and_required(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(__version__="2.9.3"))
    with pytest.raises(ConfigError, match=r"needs ray >= 2\.30, found ray 2\.9\.3"):
        engine.import_ray()


def test_engine_and_address_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        engine.check_engine("spark")
    with pytest.raises(ConfigError, match="--engine ray"):
        engine.check_engine("local", "127.0.0.1:6379")
    with pytest.raises(ConfigError, match="not host:port"):
        engine.probe("no-port-here")


@needs_ray
def test_unreachable_address_fails_fast_naming_address_and_version(small_model, tmp_path, capsys) -> None:
    import ray

    addr = f"127.0.0.1:{_free_port()}"  # nothing listens there: refused at once
    with pytest.raises(ConfigError) as e:
        engine.probe(addr, timeout=0.5)
    assert addr in str(e.value) and f"ray {ray.__version__}" in str(e.value) and ">= 2.30" in str(e.value)
    ckpt = save_classifier(tmp_path / "m.st", small_model, dataset="mnist-5k")
    rc = cli(["audit", "--model", str(ckpt), "--out", str(tmp_path / "run"), "--engine", "ray",
              "--address", addr])
    out = capsys.readouterr()
    assert rc == 2 and f"cannot reach the Ray cluster at {addr}" in out.out + out.err
    assert not (tmp_path / "run").exists()  # nothing written before the cluster was reached


# --------------------------------------------------------------------------- shadow models

def _tiny_cfg() -> Any:
    from bastion.training.shadow import ShadowConfig

    return ShadowConfig(arch="mlp", arch_args={"hidden": [32]}, epochs=2, batch_size=50, seed=3, method="vmap")


def _weights(models: list) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.module.state_dict().items()} for m in models]


def test_mixed_local_and_ray_shadows_equal_all_local_and_resume(cluster, mnist_train, tmp_path) -> None:
    from bastion.attacks.privacy.membership import LiRAConfig, compute_signals, lira_offline
    from bastion.scale.shadows import compute_signals_ray, last_placement
    from bastion.training.shadow import train_shadows

    x, y = mnist_train.x[:200], mnist_train.y[:200]
    cfg = _tiny_cfg()
    ref = train_shadows(x, y, 8, cfg, cache_dir=tmp_path / "local", device="cpu", progress=False)
    mixed = tmp_path / "mixed"
    a = train_shadows(x, y, 8, cfg, cache_dir=mixed, device="cpu", stop_after=3, progress=False)
    b = train_shadows(x, y, 8, replace(cfg, method="ray"), cache_dir=mixed, device="cpu", stop_after=3,
                      progress=False)
    assert (a.trained, b.loaded, b.trained, b.method) == (3, 3, 3, "ray")
    assert sum(last_placement().values()) >= 1
    assert sorted(p.name for p in mixed.glob("model-*.safetensors")) == [f"model-{i:05d}.safetensors"
                                                                          for i in range(6)]
    c = train_shadows(x, y, 8, cfg, cache_dir=mixed, device="cpu", progress=False)  # local finishes it
    assert (c.loaded, c.trained) == (6, 2)
    for w_ref, w_mix in zip(_weights(ref.models), _weights(c.models), strict=True):
        for k in w_ref:
            assert torch.allclose(w_ref[k], w_mix[k], atol=1e-5), k
    # scoring as Ray tasks equals local scoring, and so do the attack scores built on it
    sig_local = compute_signals(ref.models, x, y, ref.member)
    sig_ray = compute_signals_ray(c.models, x, y, c.member)
    assert torch.equal(sig_local.member, sig_ray.member)
    assert torch.allclose(sig_local.phi, sig_ray.phi, atol=1e-4)
    target = compute_signals(ref.models[:1], x, y, ref.member[:, :1])
    s_local = lira_offline(target, sig_local.models(slice(1, 8)), LiRAConfig(variance="global"))
    s_ray = lira_offline(target, sig_ray.models(slice(1, 8)), LiRAConfig(variance="global"))
    assert torch.allclose(s_local, s_ray, atol=1e-3)
    # a run with every model cached trains nothing on either engine
    d = train_shadows(x, y, 8, replace(cfg, method="ray"), cache_dir=mixed, device="cpu", progress=False)
    assert (d.loaded, d.trained, d.method) == (8, 0, "cached")


def test_cli_mia_engine_ray_matches_local(cluster, trained_model, tmp_path, capsys) -> None:
    ckpt = save_classifier(tmp_path / "t.st", trained_model("mlp", epochs=1, hidden=[32]), dataset="mnist-5k")
    common = ["mia", "--model", str(ckpt), "--attack", "lira-offline,rmia,yeom", "--shadows", "4",
              "--shadow-epochs", "1", "--eval-size", "50", "--pool-size", "200", "--json"]
    assert cli([*common, "--cache", str(tmp_path / "local"), "--method", "vmap"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert cli([*common, "--cache", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["engine"]["name"] == "ray" and remote["engine"]["cpus"] == 2
    assert remote["threat_model"]["shadow_training"]["method"] == "ray"
    assert remote["threat_model"]["shadow_training"]["trained"] == 4
    for a in ("lira-offline", "rmia", "yeom"):
        for m in ("auc", "advantage", "tpr@1%fpr"):
            assert remote["results"][a][m] == pytest.approx(local["results"][a][m], abs=1e-6), (a, m)
    assert cli([*common, "--engine", "ray", "--method", "vmap"]) == 2
    assert "drop --method vmap" in "".join(capsys.readouterr())


# --------------------------------------------------------------------------- audit sweeps

AUDIT = {"data": {"n": 24}, "sections": [
    {"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1, 0.3]},
                                    {"attack": "pgd", "eps": [0.3], "params": {"steps": 3, "alpha": 0.1}}]},
    {"kind": "membership", "name": "mia", "attacks": ["yeom", "gap"], "shadows": 0, "eval_size": 20},
]}


@pytest.fixture
def no_plots(monkeypatch) -> None:
    """Rendering PNGs is most of a small audit's time (tested in test_audit.py)."""
    from bastion.audit import evasion_section
    monkeypatch.setattr(evasion_section, "_grid_png", lambda t, names: b"png")
    monkeypatch.setattr(evasion_section.plots, "robustness_figure", lambda *a, **k: None)
    monkeypatch.setattr(evasion_section, "fig_to_png", lambda fig: b"png")


def _figures(res: dict[str, Any]) -> Any:
    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in TIMES}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    secs = strip(res["sections"])
    for s in secs.values():
        for t in s.get("tables", []):
            keep = [i for i, c in enumerate(t["columns"]) if c not in TIMES]
            t["rows"] = [[r[i] for i in keep] for r in t["rows"]]
            t["columns"] = [t["columns"][i] for i in keep]
    return {"clean": res["clean_accuracy"], "data": res["data"], "sections": secs,
            "scorecard": strip(res["scorecard"]), "verdict": res["verdict"], "steps": res["steps"]}


def test_audit_engine_ray_report_equals_local(cluster, no_plots, small_model, tmp_path, capsys) -> None:
    import yaml

    from bastion.audit import parse_config, run_audit

    ckpt = save_classifier(tmp_path / "m.st", small_model, dataset="mnist-5k")
    local = run_audit(ckpt, parse_config(json.loads(json.dumps(AUDIT))), tmp_path / "local")
    conf = tmp_path / "audit.yaml"
    conf.write_text(yaml.safe_dump(AUDIT, sort_keys=False))  # the step keys keep the params order
    args = ["audit", "--model", str(ckpt), "--config", str(conf), "--out", str(tmp_path / "ray"),
            "--engine", "ray", "--json"]
    assert cli(args) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["engine"]["steps_on_ray"] == 4 and remote["engine"]["rounds"] == 1
    assert sum(remote["engine"]["placement"].values()) == 4
    assert _figures(remote) == _figures(local.results)  # steps: 4 new, 0 cached in both
    # every step file was written by a Ray task under the local run's name and checksums
    steps = sorted(p.name for p in (tmp_path / "ray" / "steps").iterdir())
    assert steps == sorted(p.name for p in (tmp_path / "local" / "steps").iterdir())
    # resume: nothing left to dispatch, every step reused
    assert cli(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["engine"]["steps_on_ray"] == 0 and again["steps"] == {"cached": 4, "new": 0,
                                                                         "corrupt_recomputed": 0}
    assert _figures({**again, "steps": remote["steps"]}) == _figures(remote)


def test_audit_step_error_surfaces_as_itself(cluster, small_model, tmp_path) -> None:
    """A step that fails inside a Ray task raises the step's own error, not Ray's wrapper."""
    from bastion.audit import parse_config, run_audit

    cfg = parse_config({"data": {"n": 8}, "sections": [
        {"kind": "membership", "attacks": ["lira-offline"], "shadows": 2, "eval_size": 4, "attacker_data": "pool",
         "pool_size": 4}]})
    with pytest.raises(ConfigError, match="pool_size") as e:
        run_audit(small_model, cfg, tmp_path / "run", data="mnist-5k", engine="ray")
    assert "RayTaskError" not in type(e.value).__name__ and "Traceback" not in str(e.value)

