"""Model zoo shapes, the Classifier contract and safetensors checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bastion.core import CheckpointError, Classifier, ConfigError, InputError, InputSpec
from bastion.models import build_classifier, create, load_classifier, read_metadata, save_classifier


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mlp", {}, (1, 28, 28)),
    ("lenet", {}, (1, 28, 28)),
    ("lenet", {"activation": "sigmoid", "variant": "dlg"}, (1, 28, 28)),
    ("lenet", {}, (3, 32, 32)),
    ("cnn7", {}, (1, 28, 28)),
    ("cnn-small", {}, (1, 28, 28)),
    ("resnet", {"depth": 20}, (3, 32, 32)),
    ("resnet", {"depth": 32, "width": 2, "norm": "group"}, (1, 28, 28)),
])
def test_zoo_output_shapes(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    m = create(name, shape, 10, **kwargs)
    assert m(torch.rand(3, *shape)).shape == (3, 10)


def test_cnn7_architecture_matches_the_dissertation() -> None:
    m = create("cnn7", (1, 28, 28), 10)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    dense = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [d.out_features for d in dense] == [200, 200, 10]
    assert sum(isinstance(l, torch.nn.MaxPool2d) for l in m.modules()) == 2


def test_resnet_depths_and_errors() -> None:
    blocks = lambda d: sum(1 for n, _ in create("resnet", (3, 32, 32), 10, depth=d).named_modules()
                           if n.count(".") == 1 and "features." in n and "Block" in type(_).__name__)
    assert [blocks(d) for d in (20, 32, 44, 56)] == [9, 15, 21, 27]
    with pytest.raises(ConfigError, match="6n"):
        create("resnet", (3, 32, 32), 10, depth=21)
    with pytest.raises(ConfigError, match="valid models"):
        create("vgg", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="unknown argument"):
        create("cnn7", (1, 28, 28), 10, depht=3)
    with pytest.raises(ConfigError, match="valid activations"):
        create("lenet", (1, 28, 28), 10, activation="swish")


def test_classifier_normalises_inside_and_validates_inputs() -> None:
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    spec = InputSpec((1, 2, 2), mean=(0.5,), std=(0.25,))
    clf = Classifier(module, spec, 3, device="cpu")
    x = torch.rand(5, 1, 2, 2)
    assert torch.allclose(clf(x), module((x - 0.5) / 0.25))
    assert clf.probs(x).sum(-1).allclose(torch.ones(5))
    assert clf.predict(x).shape == (5,)
    with pytest.raises(InputError, match="bounds"):
        clf.check(x * 3)
    with pytest.raises(InputError, match="shape"):
        clf.check(torch.rand(5, 1, 3, 3))
    with pytest.raises(InputError, match="floating"):
        clf.check((x * 255).to(torch.uint8))
    with pytest.raises(InputError, match="labels outside"):
        clf.check(x, torch.tensor([0, 1, 2, 3, 0]))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clf = build_classifier("lenet", InputSpec((1, 28, 28), mean=(0.1307,), std=(0.3081,)), 10,
                           {"activation": "tanh"}, device="cpu")
    path = save_classifier(tmp_path / "m.st", clf, dataset="mnist-5k", test_accuracy=0.5, seed=3)
    meta = read_metadata(path)
    assert meta["arch"] == "lenet" and meta["arch_args"] == {"activation": "tanh"}
    assert meta["dataset"] == "mnist-5k" and meta["seed"] == 3 and "torch" in meta["versions"]
    back = load_classifier(path, device="cpu")
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(back(x), clf(x)) and back.spec == clf.spec
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path / "missing.st")
    (tmp_path / "junk.st").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="junk.st"):
        load_classifier(tmp_path / "junk.st")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.st"))
    with pytest.raises(CheckpointError, match="without Bastion metadata"):
        load_classifier(tmp_path / "plain.st")
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, device="cpu")
    save_classifier(tmp_path / "m.st", clf)
    # metadata that promises a different architecture than the weights
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m.st"), framework="pt") as f:
        meta = json.loads(f.metadata()["bastion"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["arch"] = "cnn7"
    save_file(state, str(tmp_path / "lie.st"), metadata={"bastion": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not match"):
        load_classifier(tmp_path / "lie.st")
