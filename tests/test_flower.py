"""The Flower engine: same global model, leakage payloads and Fed-CDP accounting as the
in-process engine; clear errors when Flower is missing or too old."""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest
import torch

from bastion.core import ConfigError, InputSpec
from bastion.data import load
from bastion.federated import FedConfig, PayloadCollector, run_fedavg
from bastion.federated import flower as flower_mod
from bastion.federated.dp import FedCDP, FedCDPConfig, FedSDP, FedSDPConfig
from bastion.models import build_classifier


def test_missing_flower_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(flower_mod.metadata, "version", missing)
    with pytest.raises(ConfigError, match=r"not installed.*pip install 'bastion\[scale\]'"):
        flower_mod.require_flower()


def test_old_flower_names_found_and_required_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower_mod.metadata, "version", lambda name: "1.5.0")
    with pytest.raises(ConfigError, match=r"flwr >= 1\.20.*found flwr 1\.5\.0"):
        flower_mod.require_flower()


@pytest.mark.slow
def test_flower_engine_reproduces_the_local_engine() -> None:
    """Fed-CDP (seeded noise) under Flower's simulation engine: the same global model, the
    same type-0/1/2 payloads and the same per-client epsilon as run_fedavg in-process."""
    pytest.importorskip("flwr", reason="the Flower engine needs the scale extra: "
                        "pip install 'bastion[scale]'")
    pytest.importorskip("ray", reason="Flower's simulation engine needs ray (bastion[scale])")
    train = load("mnist-5k", "train").take(40)
    test = load("mnist-5k", "test").take(100)
    torch.manual_seed(0)
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [16]}, device="cpu")
    fed = FedConfig(num_clients=4, clients_per_round=2, rounds=2, local_batch_size=5,
                    local_lr=0.2, progress=False)
    out = {}
    for engine in ("local", "flower"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cdp = FedCDP(FedCDPConfig(clip=1.0, sigma=0.5, variant="dyn-s-sigma",
                                      noise_seed=3), fed)
        sdp = FedSDP(FedSDPConfig(clip=5.0, sigma=0.1, noise_seed=4), fed)
        col = PayloadCollector(types=(0, 1, 2), rounds=(0, 1), limit=4)
        kw = dict(local_trainer=cdp, aggregator=sdp, update_transforms=[sdp.clip_update],
                  hooks=[col])
        res = (run_fedavg(clf, train, test, fed, **kw) if engine == "local" else
               flower_mod.run_flower(clf, train, test, fed, num_cpus=2, **kw))
        out[engine] = (res, col, cdp, sdp)
    (a, ca, pa, sa), (b, cb, pb, sb) = out["local"], out["flower"]
    assert b.config["engine"] == "flower"
    assert [h["clients"] for h in a.history] == [h["clients"] for h in b.history]
    for k in a.weights:
        assert torch.allclose(a.weights[k], b.weights[k], atol=1e-5), k
    assert a.test_accuracy == pytest.approx(b.test_accuracy)
    for t in (0, 1, 2):
        assert len(ca.events[t]) == len(cb.events[t]) > 0
        for ea, eb in zip(ca.events[t], cb.events[t]):
            assert (ea.round, ea.client, ea.step) == (eb.round, eb.client, eb.step)
            assert torch.equal(ea.victim_x.cpu(), eb.victim_x.cpu())
    for ea, eb in zip(ca.events[2], cb.events[2]):
        for k in ea.payload.gradients:
            assert torch.allclose(ea.payload.gradients[k], eb.payload.gradients[k], atol=1e-5)
    assert pa.privacy()["per_client_rdp"] == pytest.approx(pb.privacy()["per_client_rdp"])
    assert pb.privacy()["per_client_rdp"]            # the server accounted from the replies
    assert sa.epsilon() == pytest.approx(sb.epsilon())
