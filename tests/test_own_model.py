"""A user's own model: entry points with safetensors weights, torch.export programs,
refused pickles, checkpoints of user modules, and the docs/own-model.md tutorial run
command by command."""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bastion.cli.main import run
from bastion.core import CheckpointError, Classifier, ConfigError, InputSpec
from bastion.models import ModelSource, load_classifier, load_model, save_classifier

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"
OWN_NET = '''
import torch
from torch import nn


class OwnNet(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)


def build(hidden: int = 32):
    return OwnNet(hidden)
'''
USER_MODULES = ("ownnet", "mymodel", "train", "make_data", "audit_own")


def _forget_user_modules() -> None:
    for name in USER_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tmp_path as the current folder with `ownnet.py` (entry point ownnet:build) and a
    briefly trained state dict `w.safetensors` (digits, 8x8)."""
    from bastion.data import load

    (tmp_path / "ownnet.py").write_text(OWN_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget_user_modules()
    import ownnet  # type: ignore[import-not-found]

    torch.manual_seed(0)
    m = ownnet.build()
    train = load("digits", "train")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(15):
        for i in range(0, len(train), 64):
            loss = torch.nn.functional.cross_entropy(m(train.x[i:i + 64]), train.y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    save_file(m.eval().state_dict(), "w.safetensors")
    yield tmp_path
    _forget_user_modules()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_entry_point_with_weights_attacks_from_the_cli(user_dir: Path, capsys) -> None:
    rc = run(["attack", "--model", "ownnet:build", "--weights", "w.safetensors", "--input-shape", "1,8,8",
              "--num-classes", "10", "--data", "digits", "--attack", "fgsm", "--eps", "0.2", "--n", "64", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["clean_accuracy"] > 0.85  # the trained weights were loaded, not a fresh init
    assert rep["robust_accuracy"] < rep["clean_accuracy"]


def test_model_arg_reaches_the_entry_point_and_info_reports_it(user_dir: Path, capsys) -> None:
    assert run(["info", "ownnet:build", "--model-arg", "hidden=8", "--input-shape", "1,8,8", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["entry_args"] == {"hidden": 8} and meta["num_classes"] == 10
    assert meta["parameters"] == 64 * 8 + 8 + 8 * 10 + 10


def test_pickles_are_refused_with_the_conversion_recipe(user_dir: Path, capsys) -> None:
    import ownnet  # type: ignore[import-not-found]

    torch.save(ownnet.build().state_dict(), "w.pt")
    for argv in (["attack", "--model", "w.pt", "--data", "digits", "--n", "4"],
                 ["audit", "--model", "ownnet:build", "--weights", "w.pt", "--input-shape", "1,8,8",
                  "--data", "digits", "--out", "r"],
                 ["info", "w.pt"]):
        assert run(argv) == 2
        line = _one_error_line(capsys)
        assert "pickle" in line and "runs the code" in line
        assert 'save_file(model.state_dict(), "model.safetensors")' in line
    assert not (user_dir / "r").exists()


def test_missing_input_shape_names_the_flag(user_dir: Path, capsys) -> None:
    assert run(["audit", "--model", "ownnet:build", "--weights", "w.safetensors", "--data", "digits",
                "--out", "r"]) == 2
    line = _one_error_line(capsys)
    assert "--input-shape" in line
    assert not (user_dir / "r").exists()
    with pytest.raises(ConfigError, match="--input-shape"):
        load_model(ModelSource("ownnet:build", weights="w.safetensors"))


def test_wrong_weights_are_one_line(user_dir: Path, capsys) -> None:
    assert run(["attack", "--model", "ownnet:build", "--weights", "w.safetensors", "--model-arg", "hidden=16",
                "--input-shape", "1,8,8", "--data", "digits", "--n", "4"]) == 2
    line = _one_error_line(capsys)
    assert "does not fit" in line and "body.1.weight [32, 64] vs [16, 64]" in line
    save_file({"body.1.weight": torch.zeros(32, 64)}, "partial.safetensors")
    with pytest.raises(ConfigError, match=r"3 missing \(body.1.bias, body.3.weight, body.3.bias\)"):
        load_model(ModelSource("ownnet:build", weights="partial.safetensors", input_shape=(1, 8, 8)))


def test_other_refusals(user_dir: Path, capsys) -> None:
    assert run(["attack", "--model", "w.safetensors", "--data", "digits", "--n", "4"]) == 2
    assert "--model my_pkg.models:build --weights w.safetensors" in _one_error_line(capsys)
    assert run(["attack", "--model", "nosuchmod:build", "--input-shape", "1,8,8", "--data", "digits"]) == 2
    assert "'nosuchmod' cannot be imported" in _one_error_line(capsys)
    assert run(["attack", "--model", "ownnet:build", "--weights", "w.safetensors", "--input-shape", "1,8,8",
                "--num-classes", "7", "--data", "digits"]) == 2
    assert "--num-classes 7 does not match the model's 10 outputs" in _one_error_line(capsys)
    assert run(["attack", "--model", "ownnet:build", "--input-shape", "3,8,8", "--data", "digits"]) == 2
    assert "does not accept batches of inputs of shape [3, 8, 8]" in _one_error_line(capsys)


def test_export_program_round_trip_gives_identical_logits(user_dir: Path, capsys) -> None:
    import ownnet  # type: ignore[import-not-found]
    from safetensors.torch import load_file

    from bastion.data import load

    m = ownnet.build()
    m.load_state_dict(load_file("w.safetensors"))
    m.eval()
    ep = torch.export.export(m, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, "m.pt2")
    clf = load_model(ModelSource("m.pt2", input_shape=(1, 8, 8)), device="cpu")
    x = load("digits", "test").x[:50]
    assert clf.num_classes == 10
    assert torch.equal(clf.logits(x), m(x).detach())
    x.requires_grad_(True)  # attacks need input gradients through the exported graph
    clf(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert run(["attack", "--model", "m.pt2", "--input-shape", "1,8,8", "--data", "digits", "--attack", "fgsm",
                "--eps", "0.1", "--n", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clean_accuracy"] > 0.85


def test_checkpoint_of_a_user_module_round_trips(user_dir: Path, capsys) -> None:
    import ownnet  # type: ignore[import-not-found]

    clf = load_model(ModelSource("ownnet:build", weights="w.safetensors", input_shape=(1, 8, 8),
                                 mean=(0.5,), std=(0.25,)), device="cpu")
    save_classifier("own.st", clf, dataset="digits")
    back = load_classifier("own.st", device="cpu")
    x = torch.rand(16, 1, 8, 8)
    assert torch.equal(back.logits(x), clf.logits(x))
    assert back.meta["entry_point"] == "ownnet:build" and back.spec == clf.spec
    # a module built by hand: recorded by its class (importable, no arguments needed)
    plain = Classifier(ownnet.OwnNet(), InputSpec((1, 8, 8)), 10, device="cpu")
    save_classifier("cls.st", plain)
    assert load_classifier("cls.st").meta["entry_point"] == "ownnet:OwnNet"
    # arguments the class needs are given explicitly, and checked against the layout
    wide = Classifier(ownnet.OwnNet(hidden=8), InputSpec((1, 8, 8)), 10, device="cpu")
    with pytest.raises(ConfigError, match="builds another architecture"):
        save_classifier("wide.st", wide)
    save_classifier("wide.st", wide, entry_point="ownnet:build", entry_args={"hidden": 8})
    assert torch.equal(load_classifier("wide.st").logits(x), wide.logits(x))
    assert run(["attack", "--model", "own.st", "--attack", "fgsm", "--eps", "0.1", "--n", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "digits"
    # the entry point is gone: loading says so in one line
    (user_dir / "ownnet.py").unlink()
    _forget_user_modules()
    with pytest.raises(CheckpointError, match="entry point 'ownnet:build', which cannot be rebuilt"):
        load_classifier("own.st")


def test_unimportable_modules_are_refused_at_save(tmp_path: Path) -> None:
    class Local(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    clf = Classifier(Local(), InputSpec((4,)), 2, device="cpu")
    with pytest.raises(ConfigError, match="entry_point='my_pkg.models:build'"):
        save_classifier(tmp_path / "x.st", clf)
    assert not list(tmp_path.iterdir())


def test_python_run_with_a_plain_module_and_tensors(user_dir: Path) -> None:
    import ownnet  # type: ignore[import-not-found]
    from safetensors.torch import load_file

    from bastion.audit import run as audit_run
    from bastion.data import load

    m = ownnet.build()
    m.load_state_dict(load_file("w.safetensors"))
    test = load("digits", "test")
    cfg = {"data": {"n": 32}, "sections": [{"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1]}]}]}
    res = audit_run(m, (test.x, test.y), cfg, out_dir="py", input_spec=(1, 8, 8)).results
    assert res["clean_accuracy"] > 0.85 and res["data"]["n"] == 32
    assert (user_dir / "py" / "results.json").is_file()
    with pytest.raises(ConfigError, match="input_spec="):
        audit_run(m, (test.x, test.y), cfg, out_dir="py2")
    with pytest.raises(ConfigError, match="train="):
        audit_run(m, (test.x, test.y), {"sections": [{"kind": "membership", "attacks": ["gap"]}]},
                  out_dir="py2", input_spec=(1, 8, 8))
    assert not (user_dir / "py2").exists()


# --------------------------------------------------------------------------- the tutorial


def _doc_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Write every file the tutorial shows, run every command it shows, in order."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget_user_modules()
    commands = 0
    try:
        for lang, body in _doc_blocks():
            first = body.splitlines()[0]
            if lang in ("python", "yaml") and first.startswith("# "):
                (tmp_path / first[2:].strip()).write_text(body)
                continue
            if lang != "console":
                continue
            for line in body.strip().splitlines():
                argv = shlex.split(line)
                commands += 1
                if argv[0] == "python":
                    monkeypatch.setattr(sys, "argv", argv[1:])
                    runpy.run_path(str(tmp_path / argv[1]), run_name="__main__")
                else:
                    assert argv[0] == "bastion"
                    assert run(argv[1:]) == 0, capsys.readouterr().err[-2000:]
    finally:
        _forget_user_modules()
    assert commands == 5
    res = json.loads((tmp_path / "runs" / "own" / "results.json").read_text())
    assert (tmp_path / "runs" / "own" / "report.html").is_file()
    assert res["data"]["n"] == 64 and res["clean_accuracy"] > 0.85
    mia = res["sections"]["membership"]
    assert {r[0] for r in mia["tables"][0]["rows"]} == {"lira", "yeom", "gap"}
    assert (tmp_path / "runs" / "own" / "shadows").is_dir()  # shadow models of mymodel:build
    py = json.loads((tmp_path / "runs" / "own-python" / "results.json").read_text())
    assert py["clean_accuracy"] > 0.85
    assert "clean accuracy" in capsys.readouterr().out
