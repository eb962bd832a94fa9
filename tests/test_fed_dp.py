"""Fed-SDP (client-level DP-FedAvg) and Fed-CDP (instance-level DP in local training):
clipping, noise scale, accounting against the accountants, dynamic schedules, bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from bastion.core import ConfigError, InputSpec
from bastion.data import load
from bastion.federated import ClientUpdate, FedConfig, run_fedavg
from bastion.federated.dp import FedCDP, FedCDPConfig, FedSDP, FedSDPConfig, update_norm
from bastion.models import build_classifier
from bastion.privacy import PrivacyLedger, compute_epsilon
from bastion.training.dp_schedules import Decay
from bastion.training.per_example import per_example_gradients


def mlp(seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [16]}, device="cpu")


@pytest.fixture(scope="module")
def small_train():
    return load("mnist-5k", "train").take(80)


def cdp(cfg: FedCDPConfig, fed: FedConfig) -> FedCDP:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return FedCDP(cfg, fed)


def test_fed_sdp_clips_every_update_and_accounts_like_the_rdp_accountant(small_train):
    fed = FedConfig(num_clients=8, clients_per_round=4, rounds=3, local_batch_size=5, local_lr=0.5,
                    progress=False)
    sdp = FedSDP(FedSDPConfig(clip=0.05, sigma=0.8, noise_seed=3), fed)
    seen: list[ClientUpdate] = []

    def spy(u: ClientUpdate) -> ClientUpdate:
        seen.append(u)
        return u
    run_fedavg(mlp(), small_train, None, fed, aggregator=sdp, update_transforms=[sdp.clip_update, spy])
    assert len(seen) == 12
    for u in seen:
        assert u.meta["update_norm"] > 0.05        # the raw updates exceed S, so clipping acts
        assert update_norm(u.delta) == pytest.approx(0.05, rel=1e-4)
        assert u.meta["clipped_norm"] == pytest.approx(0.05, rel=1e-4)
    assert sdp.ledger.schedule == [(0.5, 0.8, 3)]
    assert sdp.epsilon() == pytest.approx(compute_epsilon(0.5, 0.8, 3, 1e-5), rel=1e-9)
    assert sdp.privacy()["accountants"]["rdp"] == sdp.epsilon()


def test_fed_sdp_noise_std_is_sigma_s_on_the_sum_and_split_over_clients():
    fed = FedConfig(num_clients=20, clients_per_round=4)
    zeros = [ClientUpdate(c, 0, {"w": torch.zeros(20_000)}, 10, 0.1, 1) for c in range(4)]
    server = FedSDP(FedSDPConfig(clip=2.0, sigma=1.5, noise_seed=1), fed)
    agg = server(zeros)["w"] * 4                    # undo the fixed denominator K
    assert float(agg.std()) == pytest.approx(1.5 * 2.0, rel=0.03)
    client = FedSDP(FedSDPConfig(clip=2.0, sigma=1.5, noise="client", noise_seed=1), fed)
    shares = [client.clip_update(u) for u in zeros]
    assert float(shares[0].delta["w"].std()) == pytest.approx(1.5 * 2.0 / 2, rel=0.03)
    total = client(shares)["w"] * 4                 # no extra server noise
    assert float(total.std()) == pytest.approx(1.5 * 2.0, rel=0.03)
    # sigma = 0: clipping only, no privacy claimed
    plain = FedSDP(FedSDPConfig(clip=2.0, sigma=0.0), fed)
    assert float(plain(zeros)["w"].abs().max()) == 0.0 and math.isinf(plain.epsilon())


def test_fed_cdp_step_is_the_clipped_per_example_sum(small_train):
    """One local DP-SGD step with (almost) no noise equals -lr/B * sum_i clip_C(g_i)."""
    fed = FedConfig(num_clients=8, clients_per_round=1, rounds=1, local_batch_size=10,
                    local_steps=1, local_lr=0.5, progress=False)
    clf = mlp()
    trainer = cdp(FedCDPConfig(clip=0.1, sigma=1e-9, poisson=False, noise_seed=0), fed)
    start = {k: v.detach().clone() for k, v in clf.named_parameters()}
    x, y = small_train.x[:10], small_train.y[:10]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    w, steps, _ = trainer(clf, start, x, y, fed, gen, 0, 0)
    pe = per_example_gradients(clf, start, x[order], y[order])
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in pe.values()))
    assert float(norms.min()) > 0.1                # every example is clipped
    factor = (0.1 / (norms + 1e-6)).clamp(max=1.0)
    for k in start:
        clipped = (pe[k] * factor.view(-1, *[1] * (pe[k].dim() - 1))).sum(0)
        assert torch.allclose(w[k], start[k] - 0.5 * clipped / 10, atol=1e-6)
    assert steps == 1 and trainer.clients[0].trace[0]["clip"] == pytest.approx(0.1)


def test_fed_cdp_dynamic_schedule_and_per_client_epsilon(small_train):
    fed = FedConfig(num_clients=4, clients_per_round=2, rounds=3, local_batch_size=5,
                    local_lr=0.1, progress=False)
    trainer = cdp(FedCDPConfig(clip=2.0, sigma=1.2, variant="dyn[S,sigma]", decay="exp",
                               poisson=False, noise_seed=5), fed)
    run_fedavg(mlp(), small_train, None, fed, local_trainer=trainer)
    spr = trainer.steps_per_round(20)                 # 4 clients x 20 examples, batch 5
    total = 3 * spr
    sig = Decay("exp", 1.2, 0.6, total)
    clip = Decay("exp", 2.0, 1.0, total)
    for c, cp in trainer.clients.items():
        for rec in cp.trace:                         # sigma_t and C_t follow the global step
            assert rec["sigma"] == pytest.approx(sig(rec["step"]))
            assert rec["clip"] == pytest.approx(clip(rec["step"]))
            assert rec["sensitivity"] <= rec["clip"] + 1e-9
        led = PrivacyLedger()
        for rec in cp.trace:
            led.step(5 / 20, rec["sigma"])
        assert trainer.privacy()["per_client_rdp"][str(c)] == pytest.approx(led.epsilon(1e-5))
    later = [r for cp in trainer.clients.values() for r in cp.trace if r["step"] >= spr]
    assert later and max(r["sigma"] for r in later) < 1.2
    worst = max(cp.ledger.epsilon(1e-5, "moments") for cp in trainer.clients.values())
    assert trainer.privacy()["accountants"]["moments"] == pytest.approx(worst)


@pytest.mark.parametrize("make, match", [
    (lambda: FedSDPConfig(clip=0.0).validate(), "S > 0"),
    (lambda: FedSDPConfig(clip=-1.0).validate(), "S > 0"),
    (lambda: FedSDPConfig(sigma=-0.1).validate(), "sigma must be >= 0"),
    (lambda: FedSDPConfig(noise="everywhere").validate(), "noise placement"),
    (lambda: FedSDP(FedSDPConfig(), FedConfig(num_clients=5, clients_per_round=6)),
     "clients_per_round must be in"),
    (lambda: FedCDPConfig(clip=0.0).validate(), "C > 0"),
    (lambda: FedCDPConfig(sigma=-1.0).validate(), "sigma must be >= 0"),
    (lambda: FedCDPConfig(variant="quantile").validate(), "Fed-CDP variant"),
    (lambda: FedCDP(FedCDPConfig(), FedConfig(num_clients=3, clients_per_round=4)),
     "clients_per_round must be in"),
])
def test_bad_input_is_refused_before_work(make, match):
    with pytest.raises(ConfigError, match=match):
        make()
