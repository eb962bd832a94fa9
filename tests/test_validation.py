"""Every bad argument, config value and checkpoint is refused up front: one line, exit 2,
nothing written, before any long work."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import pytest
import torch

from bastion.cli.main import run
from bastion.core import CheckpointError, ConfigError, resolve_device
from bastion.models import load_classifier, save_classifier


def cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = run(argv)
    return rc, err.getvalue()


def refused(argv: list[str], *words: str) -> str:
    rc, err = cli(argv)
    assert rc == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("val") / "m.st"
    save_classifier(path, small_model, dataset="mnist-5k")
    return path


def _with_meta(src: Path, dst: Path, meta_text: str, state: dict | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    save_file(state or load_file(str(src)), str(dst), metadata={"bastion": meta_text})
    return dst


@pytest.mark.parametrize("device", ["", "cpu,cuda", "meta", "cuda:99", "gpu", " "])
def test_bad_device_strings(device, ckpt):
    refused(["attack", "-m", str(ckpt), "--n", "2", "--device", device], "device")


def test_cuda_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("seed", [str(2**64), "-1", str(2**63)])
def test_seed_out_of_range(seed, ckpt):
    refused(["attack", "-m", str(ckpt), "--n", "2", "--seed", seed], "--seed")


def test_path_too_long(ckpt, tmp_path):
    refused(["info", "a" * 300 + ".st"], "too long")
    refused(["attack", "-m", str(ckpt), "--n", "2", "--out", str(tmp_path / ("b" * 300 + ".npz"))], "too long")


def test_oserror_from_file_system_is_one_line(monkeypatch, ckpt):
    import bastion.models.checkpoint as models

    def boom(*_a, **_k):
        raise OSError(36, "File name too long", "x" * 5000)
    monkeypatch.setattr(models, "read_metadata", boom)
    err = refused(["attack", "-m", str(ckpt), "--n", "2"], "File name too long")
    assert len(err) < 400


@pytest.mark.parametrize("arg", ["steps=abc", "eps=[x]", "steps=true", "eps=.nan", "steps=1e9", "restarts=1.5",
                                 'steps="'])
def test_malformed_attack_arguments(arg, ckpt):
    refused(["attack", "-m", str(ckpt), "--n", "2", "--arg", arg])


def test_attack_out_is_a_folder(ckpt, tmp_path):
    d = tmp_path / "adv.npz"
    d.mkdir()
    refused(["attack", "-m", str(ckpt), "--n", "2", "--out", str(d)], "folder")
    refused(["attack", "-m", str(ckpt), "--n", "2", "--out", ""], "empty")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_read_only_out_refused_before_training(tmp_path, monkeypatch):
    import bastion.training.pipeline as pipeline

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("trained before checking --out"))
    try:
        refused(["train", "--model", "mlp", "--out", str(ro / "m.st")], "cannot write")
    finally:
        ro.chmod(0o700)


def test_train_full_disk_refused_before_training(tmp_path, monkeypatch):
    import bastion.paths as paths
    import bastion.training.pipeline as pipeline

    real = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(paths.os, "fsync", full)
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("trained before checking --out"))
    refused(["train", "--model", "mlp", "--out", str(tmp_path / "m.st")], "No space left")
    monkeypatch.setattr(paths.os, "fsync", real)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,word", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "-1"], "--lr"),
    (["--epochs", "10001"], "--epochs"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "65537"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--dp", "--sigma", "1e-320"], "--sigma"),
])
def test_train_bounds(argv, word, tmp_path):
    refused(["train", "--out", str(tmp_path / "m.st"), *argv], word)
    assert not (tmp_path / "m.st").exists()


def test_train_out_empty_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["train", "--out", ""], "empty")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_loss_stops_training_and_saves_nothing(tmp_path):
    from bastion.training.fit import DivergedError
    from bastion.training.pipeline import train_and_save

    out = tmp_path / "m.st"
    with pytest.raises(DivergedError, match="non-finite loss"):
        train_and_save("mlp", "mnist-5k", out, epochs=1, lr=1e30, optimizer="sgd", progress=False)
    assert not out.exists()


@pytest.mark.parametrize("argv,word", [
    (["--shadows", "-1"], "--shadows"), (["--method", "nonexistent"], "method"),
    (["--variance", "bogus"], "variance"), (["--shadows", "100000"], "--shadows"),
])
def test_mia_arguments(argv, word, ckpt, monkeypatch):
    import bastion.attacks.privacy.membership as mia
    monkeypatch.setattr(mia, "audit_membership", lambda *a, **k: pytest.fail("ran"))
    refused(["mia", "-m", str(ckpt), *argv], word)


@pytest.mark.parametrize("meta", ["[1, 2]", "3", '"x"', "{}", '{"arch": "cnn-small", "num_classes": 10}',
                                  '{"arch": "cnn-small", "num_classes": 10, "input_spec": [1, 28, 28]}',
                                  '{"arch": "cnn-small", "num_classes": "ten", "input_spec": {"shape": [1, 28, 28]}}',
                                  '{"arch": 5, "num_classes": 10, "input_spec": {"shape": [1, 28, 28]}}',
                                  '{"arch": "cnn-small", "num_classes": 10, "input_spec": {"shape": ["a"]}}',
                                  '{"arch": "cnn-small", "num_classes": 10, "input_spec": {"shape": [1, 28, 28], '
                                  '"std": [NaN]}}',
                                  '{"arch": "cnn-small", "num_classes": 10, "input_spec": {"shape": [1, 100000, '
                                  '100000]}}',
                                  # found by fuzzing: explicit null bounds, a mean per wrong channel count,
                                  # a data set name that is not a string
                                  '{"arch": "cnn-small", "num_classes": 10, "input_spec": {"shape": [1, 28, 28], '
                                  '"bounds": null}, "dataset": 5}',
                                  '{"arch": "cnn-small", "num_classes": 10, "input_spec": {"shape": [1, 28, 28], '
                                  '"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}}'])
def test_checkpoint_metadata_of_wrong_type(meta, ckpt, tmp_path):
    bad = _with_meta(ckpt, tmp_path / "bad.st", meta)
    with pytest.raises(CheckpointError):
        load_classifier(bad, device="cpu")
    refused(["attack", "-m", str(bad), "--n", "2"])


def test_checkpoint_with_nan_weights_is_refused_naming_the_tensor(ckpt, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(ckpt))
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = math.nan
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()["bastion"]
    bad = _with_meta(ckpt, tmp_path / "nan.st", meta, state)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_classifier(bad, device="cpu")


def test_checkpoint_with_nan_std_is_refused(ckpt, tmp_path):
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        meta = json.loads(f.metadata()["bastion"])
    meta["input_spec"]["mean"], meta["input_spec"]["std"] = [0.1], [math.nan]
    bad = _with_meta(ckpt, tmp_path / "std.st", json.dumps(meta))
    with pytest.raises(CheckpointError, match="std"):
        load_classifier(bad, device="cpu")


# ------------------------------------------------------------------ audit configs


def _audit_refused(small_model, tmp_path, section: dict, word: str) -> None:
    from bastion.audit import run_audit
    from bastion.audit.config import parse_config

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=word):
        cfg = parse_config({"data": {"n": 8}, "sections": [section]})
        run_audit(small_model, cfg, out, data="mnist-5k")
    assert not out.exists(), "a refused config left a run folder"


@pytest.mark.parametrize("eps", [[0.1, math.nan], [0.1, math.inf], [0.1, -0.2], [0.1, 5.0], [], [True]])
def test_every_budget_is_checked_before_any_step(eps, small_model, tmp_path):
    _audit_refused(small_model, tmp_path, {"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": eps}]}, "")


@pytest.mark.parametrize("params", [{"steps": "abc"}, {"eps": ["x"]}, {"steps": True}, {"alpha": math.nan}])
def test_wrongly_typed_attack_params(params, small_model, tmp_path):
    _audit_refused(small_model, tmp_path, {"kind": "evasion", "attacks": [
        {"attack": "pgd", "eps": [0.1], "params": params}]}, "pgd")


def test_targeted_mode_checked_up_front(small_model, tmp_path):
    _audit_refused(small_model, tmp_path, {"kind": "evasion", "attacks": [
        {"attack": "pgd", "eps": [0.1], "targeted": "bogus"}]}, "targeted")


@pytest.mark.parametrize("opts,word", [({"variance": "bogus"}, "variance"), ({"method": "nope"}, "method"),
                                       ({"shadows": True}, "shadows"), ({"shadows": 10**6}, "shadows")])
def test_membership_values_checked_up_front(opts, word, small_model, tmp_path):
    _audit_refused(small_model, tmp_path, {"kind": "membership", "attacks": ["lira"], "shadows": 4, **opts},
                   word)


@pytest.mark.parametrize("raw,word", [({"data": {"n": True}}, "n"), ({"data": {"n": 10**12}}, "n"),
                                      ({"seed": 2**64}, "seed"), ({"seed": -1}, "seed"),
                                      ({"batch_size": 10**9}, "batch_size")])
def test_config_numbers(raw, word):
    from bastion.audit.config import parse_config

    with pytest.raises(ConfigError, match=word):
        parse_config({**raw, "sections": [{"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1]}]}]})


def test_dp_delta_of_wrong_type():
    from bastion.audit.sections import validate_section

    with pytest.raises(ConfigError, match="delta"):
        validate_section("dp", {"kind": "dp", "delta": "abc"})


def test_audit_out_empty_refused(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["audit", "-m", str(ckpt), "--out", ""], "empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model,arg,word", [
    ("mlp", "hidden=abc", "hidden"), ("mlp", "hidden=-3", "hidden"), ("mlp", "hidden=[1000000,1000000]", "parameters"),
    ("resnet", "depth=abc", "depth"), ("resnet", "width=1000000", "parameters"),
])
def test_model_arguments_typed_and_bounded(model, arg, word, tmp_path):
    """Found by fuzzing: a string or a huge width reached torch (TypeError, a 10^12-weight allocation)."""
    refused(["train", "--model", model, "--epochs", "1", "--out", str(tmp_path / "m.st"), "--arg", arg], word)
    assert list(tmp_path.iterdir()) == []


def test_diverged_weights_are_never_saved(tmp_path, monkeypatch):
    """A finite loss can still leave infinite weights (e.g. DP training): nothing is saved."""
    import bastion.training.pipeline as pipeline
    from bastion.training.fit import DivergedError, TrainResult

    def poisoned_fit(clf, *a, **k):
        with torch.no_grad():
            next(clf.module.parameters()).fill_(math.inf)
        return TrainResult(test_accuracy=0.1, train_accuracy=0.1)
    monkeypatch.setattr(pipeline, "fit", poisoned_fit)
    out = tmp_path / "m.st"
    with pytest.raises(DivergedError, match="nothing was saved"):
        pipeline.train_and_save("mlp", "mnist-5k", out, epochs=1, progress=False)
    assert not out.exists()
