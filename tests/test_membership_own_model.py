"""Membership inference against a user's own architecture: shadow models built by its
entry point or a build_fn, trained by Bastion's stacked (vmap) path when the module
allows it, else one at a time or by the user's train_fn; Yeom and the gap attack with no
architecture at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bastion.attacks.privacy.membership import MIAConfig, audit_membership
from bastion.cli.main import run
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data import load
from bastion.models import ModelSource, load_model
from bastion.training.shadow import ShadowConfig, _build, _vmappable, train_shadows
from test_own_model import user_dir  # noqa: F401  (fixture: ownnet.py + w.safetensors in cwd)

SPEC = InputSpec((1, 8, 8))


class BNNet(nn.Module):
    """BatchNorm running statistics are updated in place: no stacked training."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Counting(nn.Module):
    """Writes a buffer in its forward pass (a running counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _fit(model: nn.Module, data, epochs: int = 15, lr: float = 1e-2) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(data), 64):
            loss = nn.functional.cross_entropy(model(data.x[i:i + 64]), data.y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_stacked_training_is_detected_per_module() -> None:
    assert _vmappable(Classifier(_mlp(), SPEC, 10, device="cpu"))
    assert not _vmappable(Classifier(BNNet(), SPEC, 10, device="cpu"))
    assert not _vmappable(Classifier(Counting(), SPEC, 10, device="cpu"))


def test_lira_with_shadows_of_an_entry_point_from_the_cli(user_dir: Path, capsys) -> None:  # noqa: F811
    rc = run(["mia", "--model", "ownnet:build", "--weights", "w.safetensors", "--input-shape", "1,8,8",
              "--data", "digits", "--attack", "lira,gap", "--shadows", "4", "--eval-size", "100",
              "--shadow-epochs", "3", "--out", "mia", "--json"])
    assert rc == 0, capsys.readouterr().err[-1500:]
    rep = json.loads(capsys.readouterr().out)
    st = rep["threat_model"]["shadow_training"]
    assert st["trained"] == 4 and st["method"] == "vmap"  # no BatchNorm: the stacked fast path
    assert st["recipe"]["entry_point"] == "ownnet:build"
    assert rep["results"]["lira"]["auc"] > 0.5
    # the shadow models are the user's architecture, stored in the cache
    from safetensors.torch import load_file
    state = load_file(str(user_dir / "mia" / "shadows" / "pool" / "model-00000.safetensors"))
    assert set(state) == {"body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"}
    # a second run loads every shadow from the cache
    assert run(["mia", "--model", "ownnet:build", "--weights", "w.safetensors", "--input-shape", "1,8,8",
                "--data", "digits", "--attack", "lira,gap", "--shadows", "4", "--eval-size", "100",
                "--shadow-epochs", "3", "--out", "mia", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["threat_model"]["shadow_training"]["loaded_from_cache"] == 4
    assert again["results"]["lira"]["auc"] == rep["results"]["lira"]["auc"]


def test_build_fn_and_train_fn_in_python_with_batchnorm() -> None:
    train, test = load("digits", "train"), load("digits", "test")
    target = Classifier(_fit(BNNet(), train), SPEC, 10, device="cpu")
    calls: list[int] = []

    def my_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        calls.append(len(x))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            for i in range(0, len(x), 64):
                loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model

    cfg = MIAConfig(attacks=("lira", "yeom", "gap"), shadows=4, eval_size=100, seed=0)
    rep = audit_membership(target, train, test, cfg, build_fn=BNNet, train_fn=my_train)
    st = rep.threat_model["shadow_training"]
    assert st["method"] == "loop" and st["trained"] == 4 and len(calls) == 4
    assert all(n == calls[0] for n in calls)  # every shadow on its half of the pool
    assert "BNNet" in st["recipe"]["build_fn"]["name"] and "my_train" in st["recipe"]["train_fn"]
    assert rep.results["lira"]["auc"] > 0.5
    assert rep.threat_model["yeom_threshold_source"] == "shadow models' mean IN loss"


def test_build_fn_without_train_fn_uses_the_stacked_path() -> None:
    x, y = load("digits", "train").x[:256], load("digits", "train").y[:256]
    cfg = ShadowConfig(build_fn=_mlp, spec=SPEC, epochs=1, method="auto")
    sh = train_shadows(x, y, 4, cfg, num_classes=10, device="cpu")
    assert sh.method == "vmap" and len(sh.models) == 4
    # the same models as one-at-a-time training, up to float rounding
    loop = train_shadows(x, y, 4, ShadowConfig(build_fn=_mlp, spec=SPEC, epochs=1, method="loop"),
                         num_classes=10, device="cpu")
    for a, b in zip(sh.models, loop.models, strict=True):
        assert torch.allclose(a.logits(x[:16]), b.logits(x[:16]), atol=1e-4)
    with pytest.raises(ConfigError, match="worker processes"):
        ShadowConfig(build_fn=_mlp, method="process").validate()
    assert _build(cfg, SPEC, 10, 0, torch.device("cpu")).module.__class__ is nn.Sequential


def test_yeom_and_gap_need_no_architecture(tmp_path: Path) -> None:
    train, test = load("digits", "train").take(300), load("digits", "test")
    # no zoo name, no entry point; trained long on few examples, so it overfits them
    target = Classifier(_fit(_mlp(), train, epochs=100), SPEC, 10, device="cpu")
    rep = audit_membership(target, train, test, MIAConfig(attacks=("yeom", "gap"), eval_size=200))
    assert rep.threat_model["shadows"] == 0
    assert rep.threat_model["yeom_threshold_source"] == "target's mean loss on its training set (members)"
    assert rep.results["yeom"]["auc"] > 0.5 and rep.results["gap"]["advantage"] >= 0
    with pytest.raises(ConfigError, match="build_fn="):
        audit_membership(target, train, test, MIAConfig(attacks=("lira",), shadows=4, eval_size=50))
    # a torch.export program: yeom and gap from the command line, shadow attacks refused in one line
    ep = torch.export.export(target.module, (torch.zeros(2, 1, 8, 8),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    exported = load_model(ModelSource(tmp_path / "m.pt2", input_shape=(1, 8, 8)), device="cpu")
    rep2 = audit_membership(exported, train, test, MIAConfig(attacks=("yeom", "gap"), eval_size=200))
    assert rep2.results["yeom"]["auc"] == pytest.approx(rep.results["yeom"]["auc"])
    with pytest.raises(ConfigError, match="torch.export program"):
        audit_membership(exported, train, test, MIAConfig(attacks=("rmia",), shadows=2, eval_size=50))


def test_fresh_copies_of_an_in_memory_module_as_shadows() -> None:
    from bastion.models.entrypoint import fresh_builder

    train, test = load("digits", "train").take(300), load("digits", "test")
    module = _fit(_mlp(), train, epochs=20)
    build = fresh_builder(module)
    copy = build()
    assert all(not torch.equal(a, b) for a, b in zip(copy.parameters(), module.parameters(), strict=True))
    target = Classifier(module, SPEC, 10, device="cpu")
    target.shadow_build_fn = build  # what bastion.audit.run sets for a plain module
    rep = audit_membership(target, train, test, MIAConfig(attacks=("lira-offline",), shadows=2, eval_size=100,
                                                          shadow_epochs=2))
    assert rep.threat_model["shadow_training"]["trained"] == 2
    with pytest.raises(ConfigError, match="reset_parameters"):
        fresh_builder(_with_orphan())


def _with_orphan() -> nn.Module:
    m = Counting()
    m.scale = nn.Parameter(torch.ones(1))
    return m
