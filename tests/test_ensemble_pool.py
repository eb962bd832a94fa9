"""Pool building (manifest, resume), loading checks and `Ensemble` as a Classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bastion.attacks.evasion import FGSM
from bastion.core import ConfigError, InputSpec
from bastion.data import load
from bastion.defenses.ensemble import Ensemble, PoolConfig, build_pool, load_pool, read_manifest
from bastion.models.checkpoint import build_classifier

POOL = {"data": "digits", "seed": 0, "train": {"batch_size": 64, "lr": 0.01},
        "members": [{"name": "mlp-a", "arch": "mlp", "args": {"hidden": [32]}, "epochs": 5},
                    {"name": "mlp-b", "arch": "mlp", "args": {"hidden": [32]}, "epochs": 6},
                    {"name": "mlp-c", "arch": "mlp", "args": {"hidden": [48, 24]}, "epochs": 5}]}


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    build_pool(PoolConfig.from_dict({**POOL, "out": str(out)}), progress=False)
    return out


def test_pool_build_writes_manifest_and_resumes(pool_dir: Path) -> None:
    man = read_manifest(pool_dir)
    assert [m["name"] for m in man["members"]] == ["mlp-a", "mlp-b", "mlp-c"]
    assert all(m["test_accuracy"] > 0.8 for m in man["members"])
    before = {p.name: p.stat().st_mtime_ns for p in pool_dir.glob("*.st")}
    trained: list[str] = []
    cfg = {**POOL, "out": str(pool_dir), "members": [*POOL["members"], {"name": "mlp-d", "arch": "mlp",
                                                                          "args": {"hidden": [16]}, "epochs": 1}]}
    build_pool(PoolConfig.from_dict(cfg), on_member=lambda e: trained.append(e["name"]), progress=False)
    assert trained == ["mlp-d"]  # finished members are not trained again
    assert all(pool_dir.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    pool = load_pool(pool_dir)
    assert pool.names == ["mlp-a", "mlp-b", "mlp-c", "mlp-d"]


def test_pool_config_errors() -> None:
    with pytest.raises(ConfigError, match="unique"):
        PoolConfig.from_dict({**POOL, "out": "x", "members": [POOL["members"][0]] * 2})
    with pytest.raises(ConfigError, match="no key"):
        PoolConfig.from_dict({**POOL, "out": "x", "members": [{"arch": "mlp", "kernel": 3}]})
    with pytest.raises(ConfigError, match="epochs"):
        PoolConfig.from_dict({**POOL, "out": "x", "members": [{"arch": "mlp", "epochs": 0}]})
    with pytest.raises(ConfigError, match="no pool manifest"):
        load_pool(Path("/nonexistent-pool"))


def test_pool_members_must_agree() -> None:
    a = build_classifier("mlp", InputSpec((1, 8, 8)), 10, device="cpu")
    b = build_classifier("mlp", InputSpec((1, 8, 8)), 5, device="cpu")
    c = build_classifier("mlp", InputSpec((1, 28, 28)), 10, device="cpu")
    with pytest.raises(ConfigError, match="classes"):
        load_pool([a, b])
    with pytest.raises(ConfigError, match="takes inputs"):
        Ensemble([a, c])


def test_ensemble_is_a_classifier_and_vmap_matches_loop(pool_dir: Path) -> None:
    pool = load_pool(pool_dir, device="cpu")
    test = load("digits", "test")
    x, y = test.x[:200], test.y[:200]
    fast = Ensemble(pool.members, consensus="soft", vectorize=True)
    slow = Ensemble(pool.members, consensus="soft", vectorize=False)
    assert len(fast.module.groups) < len(pool.members)  # the two 32-unit mlps share one vmap call
    assert torch.allclose(fast.logits(x), slow.logits(x), atol=1e-5)
    accs = [m.accuracy(x, y) for m in pool.members]
    assert fast.accuracy(x, y) >= min(accs)
    vote = Ensemble(pool.members, consensus="plurality")
    assert vote.accuracy(x, y) >= min(accs)
    # white-box attack on the whole ensemble through its soft surrogate
    res = FGSM(eps=0.3)(vote.adaptive(), x[:64], y[:64])
    assert vote.accuracy(res.x_adv, y[:64]) < vote.accuracy(x[:64], y[:64]) - 0.3


def test_pool_build_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bastion.cli.main import run

    cfg = tmp_path / "pool.yaml"
    cfg.write_text("data: digits\nout: pool\nmembers:\n  - {name: m1, arch: mlp, args: {hidden: [16]}, epochs: 1}\n")
    assert run(["pool", "build", "--config", str(cfg), "--out", str(tmp_path / "p"), "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["members"][0]["name"] == "m1" and (tmp_path / "p" / "m1.st").is_file()
    cfg.write_text("data: digits\nout: pool\nmembers:\n  - {name: m1, arch: resnet, args: {depth: 7}}\n")
    assert run(["pool", "build", "--config", str(cfg), "--out", str(tmp_path / "q"), "--quiet"]) == 2
    assert "depth" in capsys.readouterr().err and not (tmp_path / "q" / "pool.json").exists()


def test_defend_with_xensemble_and_ensemble_round_trip(pool_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bastion.cli.main import run
    from bastion.defenses.xensemble import XEnsemble
    from bastion.models.checkpoint import load_classifier

    target = str(pool_dir / "mlp-a.st")
    dens = "denoisers=[{name: bit-depth, bits: 3}, {name: gaussian-blur, sigma: 0.5}]"
    out = tmp_path / "xe.st"
    argv = ["defend", "-m", target, "--defense", "xensemble", "--params", f"pool={pool_dir}", "--params", "n=2",
            "--params", dens, "--params", "tolerance=0.05", "--params", "kappa_on=benign", "--data", "digits",
            "--n", "100", "--out", str(out), "--json", "--quiet"]
    assert run(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "xensemble" and len(rep["teams"][0]) == 2 and rep["false_flag_rate"] < 0.2
    xe = load_classifier(out, device="cpu")
    assert isinstance(xe, XEnsemble) and len(xe.denoisers) == 2
    x = load("digits", "test").x[:100]
    assert abs(xe.accuracy(x, load("digits", "test").y[:100]) - rep["defended_accuracy"]) < 1e-6
    assert run(["defend", "-m", target, "--defense", "ensemble", "--params", f"pool={pool_dir}", "--params",
                "n=2", "--params", "kappa_on=benign", "--data", "digits", "--n", "100", "--out",
                str(tmp_path / "e.st"), "--quiet"]) == 0
    assert isinstance(load_classifier(tmp_path / "e.st", device="cpu"), Ensemble)
    # bad input: one error line before any work
    for bad, msg in ((["--params", "n=9"], "larger than the pool"), (["--params", "threshold=1.5"], "threshold T"),
                     ([], "pool=PATH")):
        params = [] if not bad or bad[1].startswith("pool") else ["--params", f"pool={pool_dir}"]
        rc = run(["defend", "-m", target, "--defense", "xensemble", *params, *bad, "--data", "digits",
                  "--out", str(tmp_path / "bad.st"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and not (tmp_path / "bad.st").exists(), err


def test_audit_defense_section_with_xensemble(pool_dir: Path, tmp_path: Path) -> None:
    from bastion.audit.config import parse_config
    from bastion.audit.runner import run_audit

    ens = {"name": "xensemble", "params": {"pool": str(pool_dir), "n": 2, "tolerance": 0.05, "kappa_on": "benign",
                                           "denoisers": [{"name": "bit-depth", "bits": 3},
                                                         {"name": "gaussian-blur", "sigma": 0.5}]}}
    section = {"kind": "defense", "ensemble": ens, "attacks": [{"attack": "fgsm", "eps": [0.1]}]}
    run = run_audit(pool_dir / "mlp-a.st", parse_config({"seed": 0, "data": {"n": 48}, "sections": [section]}),
                    tmp_path / "run")
    summary = run.results["sections"]["defense"]["summary"]
    (row,) = summary["runs"]
    assert summary["defense"]["kind"] == "xensemble"
    assert row["adaptive_attack"].startswith("BPDA mean-probability surrogate")
    assert row["robust_adaptive"] is not None and "detection_rate" in row
    assert summary["clean"]["false_positive_rate"] is not None
    bad = {**section, "defense": ens}
    bad.pop("ensemble")
    with pytest.raises(ConfigError, match="put it under ensemble"):
        run_audit(pool_dir / "mlp-a.st", parse_config({"seed": 0, "sections": [bad]}), tmp_path / "bad")
