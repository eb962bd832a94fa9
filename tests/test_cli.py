"""CLI: every foundation command, --json output, exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli.main import run
from bastion.models import save_classifier


def _json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


def test_train_json_and_info(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.st"
    rc = run(["train", "--model", "mlp", "--data", "digits", "--epochs", "3", "--lr", "0.005", "--arg", "hidden=[32]",
              "--out", str(out), "--json"])
    assert rc == 0
    rep = _json(capsys)
    assert rep["model"] == "mlp" and rep["epochs_run"] == 3 and rep["test_accuracy"] > 0.5
    assert run(["info", str(out), "--json"]) == 0
    meta = _json(capsys)
    assert meta["arch_args"] == {"hidden": [32]} and meta["dataset"] == "digits"


def test_list_commands_json(capsys) -> None:
    assert run(["models", "--json"]) == 0
    assert {m["name"] for m in _json(capsys)} >= {"cnn7", "lenet", "resnet"}
    assert run(["datasets", "--json"]) == 0
    assert {"mnist-5k": True, "cifar10": False}.items() <= {d["name"]: d["embedded"] for d in _json(capsys)}.items()


def test_audit_cli_json(small_model, tmp_path: Path, capsys) -> None:
    ckpt = save_classifier(tmp_path / "s.st", small_model, dataset="mnist-5k")
    cfg = tmp_path / "a.yaml"
    cfg.write_text("sections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [0.2]}\n")
    rc = run(["audit", "--model", str(ckpt), "--config", str(cfg), "--n", "16", "--out",
              str(tmp_path / "r"), "--json"])
    assert rc == 0
    res = _json(capsys)
    assert res["sections"]["evasion"]["summary"]["runs"][0]["attack"] == "fgsm"
    assert (tmp_path / "r" / "report.html").is_file()


@pytest.mark.parametrize("argv,msg", [
    (["train", "--model", "vgg99", "--out", "x.st"], "valid models"),
    (["train", "--data", "imagenet", "--out", "x.st"], "valid data sets"),
    (["train", "--epochs", "0", "--out", "x.st"], "epochs"),
    (["train", "--out", "x.pt"], ".st"),
    (["audit", "--model", "missing.st", "--out", "r"], "not found"),
    (["info", "missing.st"], "not found"),
])
def test_bad_input_exits_2_with_a_clear_message(argv: list[str], msg: str, tmp_path: Path, capsys,
                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert msg in err.replace("\n", " ")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_corrupt_checkpoint_exits_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.st"
    bad.write_bytes(b"garbage")
    assert run(["audit", "--model", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "bad.st" in capsys.readouterr().err


def test_usage_error_exits_2(capsys) -> None:
    assert run(["train", "--epochs", "many"]) == 2


@pytest.mark.parametrize("argv,msg", [
    (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
    (["attack", "--seed", "1e5"], "Invalid value for '--seed'"),
    (["train", "--no-such-flag"], "No such option"),  # click: "option: --x", typer's copy: "option '--x'"
    (["nosuch"], "No such command 'nosuch'"),
    (["privacy", "epsilon", "--q"], "requires an argument"),
    (["audit"], "Missing option '--model'"),
])
def test_usage_errors_are_one_line(argv: list[str], msg: str, capsys) -> None:
    """The parser's own errors read like Bastion's: one `error:` line and a pointer to --help."""
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and msg in err, err
    assert "--help" in err
    if "--no-such-flag" in argv:
        assert "--no-such-flag" in err


def test_help_still_prints_and_exits_0(capsys) -> None:
    assert run(["--help"]) == 0
    assert "audit" in capsys.readouterr().out
    assert run(["privacy"]) == 2  # a group alone shows its help, as click does
    assert "epsilon" in capsys.readouterr().out


@pytest.mark.parametrize("flagged", ["-", ".", "./", "sub/.."])
def test_out_refuses_stdout_and_the_current_folder(flagged: str, small_model, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    ckpt = save_classifier(tmp_path / "s.st", small_model, dataset="mnist-5k")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert run(["leak", "--model", str(ckpt), "--out", flagged]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --out"), err
    assert sorted(p.name for p in work.iterdir()) == ["sub"]  # nothing written, no folder "-"
    assert run(["train", "--out", "-"]) == 2
    assert "standard output" in capsys.readouterr().err
