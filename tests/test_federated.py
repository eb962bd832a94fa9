"""Federated simulation: FedAvg training, leakage hooks (type 0/1/2), aggregators."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.privacy.leakage import (
    CPLConfig,
    SharedGradient,
    WeightUpdate,
    cpl_attack,
    shared_gradient,
    uniform_init_,
)
from bastion.core import ConfigError, InputSpec
from bastion.defenses.gradient import ClipNoise
from bastion.federated import (
    ClientUpdate,
    FedConfig,
    FedHook,
    PayloadCollector,
    fedavg,
    get_aggregator,
    median,
    run_fedavg,
    trimmed_mean,
)
from bastion.models import build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed=0):
    torch.manual_seed(seed)
    return build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [128]}, device="cpu")


def test_fedavg_trains_to_reasonable_accuracy(mnist_train, mnist_test):
    clf = mlp()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    cfg = FedConfig(num_clients=10, clients_per_round=5, rounds=8, local_lr=0.1,
                    local_batch_size=16, seed=0)
    res = run_fedavg(clf, mnist_train.take(2000), mnist_test, cfg)
    accs = [h["test_accuracy"] for h in res.history]
    assert len(res.history) == 8 and all(len(h["clients"]) == 5 for h in res.history)
    assert res.test_accuracy > 0.8 and accs[-1] > accs[0]
    assert abs(res.model.accuracy(mnist_test.x, mnist_test.y) - res.test_accuracy) < 1e-6
    for k, v in clf.state_dict().items():  # the input model is left untouched
        assert torch.equal(v, before[k])
    again = run_fedavg(mlp(), mnist_train.take(2000), mnist_test, cfg)
    assert again.test_accuracy == res.test_accuracy  # seeded


def test_dirichlet_split_and_sampling(mnist_train):
    seen = []

    class Rounds(FedHook):
        def on_round_end(self, round, record):
            seen.append(record["clients"])

    cfg = FedConfig(num_clients=6, clients_per_round=3, rounds=3, partition="dirichlet", alpha=0.3,
                    local_steps=2)
    run_fedavg(mlp(), mnist_train.take(600), None, cfg, hooks=[Rounds()])
    assert len(seen) == 3 and all(len(c) == 3 and len(set(c)) == 3 for c in seen)


def test_hooks_hand_out_three_payload_types(mnist_train):
    clf = mlp()
    col = PayloadCollector(types=(0, 1, 2), rounds=(0,), steps=(0,), limit=4)
    cfg = FedConfig(num_clients=4, clients_per_round=4, rounds=1, local_steps=2,
                    local_batch_size=8, local_lr=0.05)
    run_fedavg(clf, mnist_train.take(200), None, cfg, hooks=[col])
    t2, t1, t0 = col.events[2], col.events[1], col.events[0]
    assert len(t2) == 4 and len(t1) == 4 and len(t0) == 1
    # type 2: the exact per-example gradient at the client's current weights
    ev = t2[0]
    assert isinstance(ev.payload, SharedGradient) and ev.payload.batch_size == 1
    ref = shared_gradient(clf, ev.victim_x, ev.victim_y)  # step 0 = global weights
    for k in ref.gradients:
        assert torch.allclose(ev.payload.gradients[k], ref.gradients[k], atol=1e-6)
    # type 1: a client's update with its learning rate and local steps
    up = t1[0].payload
    assert isinstance(up, WeightUpdate) and up.lr == 0.05 and up.local_steps == 2
    up.validate(clf)
    # type 0: the server aggregate is the example-weighted mean of the type-1 updates
    agg = t0[0].payload
    n = torch.tensor([float(e.payload.meta["num_examples"]) for e in t1])
    for k in agg.weights_before:
        deltas = torch.stack([e.payload.weights_after[k] - e.payload.weights_before[k] for e in t1])
        want = (deltas * (n / n.sum()).view(-1, *[1] * (deltas.dim() - 1))).sum(0)
        assert torch.allclose(agg.weights_after[k] - agg.weights_before[k], want, atol=1e-6)


def test_type2_payload_leaks_through_cpl(mnist_train):
    clf = uniform_init_(build_classifier("lenet", InputSpec((1, 28, 28)), 10,
                                         {"activation": "sigmoid", "variant": "dlg"}, device="cpu"), seed=0)
    col = PayloadCollector(types=(2,), rounds=(0,), clients=(0,), limit=1)
    cfg = FedConfig(num_clients=10, clients_per_round=10, rounds=1, local_steps=1,
                    local_batch_size=4, local_lr=0.01)
    run_fedavg(clf, mnist_train.take(100), None, cfg, hooks=[col])
    ev = col.events[2][0]
    res = cpl_attack(clf, ev.payload, CPLConfig(max_iter=20), reference=ev.victim_x,
                     reference_labels=ev.victim_y)
    assert bool(res.success.all()) and res.label_accuracy == 1.0


def test_per_example_local_transform_bounds_updates(mnist_train):
    clip = 0.05
    cfg = FedConfig(num_clients=2, clients_per_round=2, rounds=1, local_steps=3,
                    local_batch_size=8, local_lr=0.5)
    col = PayloadCollector(types=(1,), rounds=(0,), limit=2)
    run_fedavg(mlp(), mnist_train.take(100), None, cfg, local_transform=ClipNoise(clip, 0.0),
               hooks=[col])
    for ev in col.events[1]:
        d = torch.cat([(ev.payload.weights_after[k] - ev.payload.weights_before[k]).flatten()
                       for k in ev.payload.weights_before])
        assert float(d.norm()) <= cfg.local_lr * clip * cfg.local_steps + 1e-5
        assert float(d.norm()) > 0


def test_aggregators():
    def upd(v, n):
        return ClientUpdate(0, 0, {"w": torch.tensor([v, -v])}, n, 0.1, 1)
    ups = [upd(1.0, 1), upd(2.0, 1), upd(10.0, 2)]
    assert torch.allclose(fedavg(ups)["w"], torch.tensor([5.75, -5.75]))
    assert torch.allclose(get_aggregator("mean")(ups)["w"], torch.tensor([13 / 3, -13 / 3]))
    assert torch.allclose(median(ups)["w"], torch.tensor([2.0, -2.0]))
    assert torch.allclose(trimmed_mean(0.34)(ups)["w"], torch.tensor([2.0, -2.0]))
    with pytest.raises(ConfigError, match="unknown aggregator"):
        get_aggregator("krum2")
    with pytest.raises(ConfigError):
        fedavg([])


def test_bad_config(mnist_train):
    with pytest.raises(ConfigError, match="clients_per_round"):
        run_fedavg(mlp(), mnist_train.take(50), None, FedConfig(num_clients=3, clients_per_round=5))
    with pytest.raises(ConfigError, match="partition"):
        FedConfig(partition="shards").validate()
    with pytest.raises(ConfigError, match="local_lr"):
        FedConfig(local_lr=0).validate()


def test_vectorized_clients_match_the_loop(mnist_train, mnist_test):
    accs = {}
    for vec in (False, True):
        cfg = FedConfig(num_clients=5, clients_per_round=5, rounds=3, local_lr=0.1,
                        local_batch_size=16, vectorize=vec)
        accs[vec] = run_fedavg(mlp(), mnist_train.take(1000), mnist_test, cfg).test_accuracy
    assert accs[True] > 0.6 and abs(accs[True] - accs[False]) < 0.05


@pytest.mark.parametrize("arch", ["mlp", "lenet"])
def test_lockstep_groups_give_the_loops_weights(mnist_train, arch, monkeypatch):
    """Groups of 2 (and a last group of 1) of 5 sampled clients, convolutions included:
    the same weights as one client at a time, and oneDNN is on again afterwards."""
    from bastion.federated import simulation
    groups: list[int] = []
    real = simulation.local_train_vectorized

    def spy(model, start, xs, *rest):
        groups.append(xs.shape[0])
        return real(model, start, xs, *rest)
    monkeypatch.setattr(simulation, "local_train_vectorized", spy)
    def net():
        torch.manual_seed(0)
        return build_classifier(arch, InputSpec((1, 28, 28)), 10, {}, device="cpu")
    start = {k: v.detach() for k, v in net().named_parameters()}
    out = {}
    for vec in (False, True):
        cfg = FedConfig(num_clients=8, clients_per_round=5, rounds=2, local_lr=0.05,
                        local_batch_size=10, vectorize=vec, vectorize_group=2, progress=False)
        out[vec] = run_fedavg(net(), mnist_train.take(400), None, cfg).weights
    diff = max(float((out[True][k] - out[False][k]).abs().max()) for k in start)
    moved = max(float((out[False][k] - start[k]).abs().max()) for k in start)
    assert groups == [2, 2, 1] * 2
    assert diff < 1e-5 and moved > 1e-2
    assert torch.backends.mkldnn.enabled


def test_lockstep_group_size_follows_the_device_budget():
    from bastion.federated.simulation import LOCKSTEP_CPU_BYTES, lockstep_group
    w = {"w": torch.zeros(LOCKSTEP_CPU_BYTES // 4 // 10)}     # a tenth of the budget
    assert lockstep_group(FedConfig(), w, 100) == 10
    assert lockstep_group(FedConfig(), w, 4) == 4
    assert lockstep_group(FedConfig(vectorize_group=3), w, 100) == 3
    assert lockstep_group(FedConfig(), {"w": torch.zeros(LOCKSTEP_CPU_BYTES)}, 100) == 1
    with pytest.raises(ConfigError, match="vectorize_group"):
        FedConfig(vectorize_group=0).validate()
