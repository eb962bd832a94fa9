"""DP-SGD: clipping really bounds per-example norms, the noise has the claimed scale, the
engines agree, dynamic sensitivity beats the baseline at large C, bad input is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data import load
from bastion.models import build_classifier
from bastion.training.dp import DPSGD, DPConfig, make_engine, train_dp
from bastion.training.dp_schedules import Decay


@pytest.fixture(scope="module")
def digits() -> tuple:
    return load("digits", "train", size=8), load("digits", "test", size=8)


def _mlp(seed: int = 0, arch: str = "mlp", **args) -> Classifier:
    torch.manual_seed(seed)
    args = args or {"hidden": [32]}
    return build_classifier(arch, InputSpec((1, 8, 8)), 10, args, device="cpu")


def _clipped_single(clf: Classifier, cfg: DPConfig, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The released gradient of a one-example batch with (almost) no noise, times the
    expected batch size: the clipped per-example gradient itself."""
    dp = DPSGD(clf, cfg, n=1000)
    grads, _ = dp.privatize(x, y)
    dp.close()
    return [g * dp.expected_batch for g in grads]


@pytest.mark.parametrize("engine", ["ghost", "vmap"])
def test_flat_clipping_bounds_norm(digits, engine: str) -> None:
    train, _ = digits
    clf = _mlp()
    for i in range(4):
        x, y = train.x[i:i + 1], train.y[i:i + 1]
        raw = make_engine(clf, "vmap").compute(clf, x, y).norms_sq.sum().sqrt().item()
        for c in (raw / 4, raw * 4):
            cfg = DPConfig(clip=c, sigma=1e-9, batch_size=10, engine=engine)
            norm = torch.sqrt(sum(g.pow(2).sum() for g in _clipped_single(clf, cfg, x, y))).item()
            assert norm <= c * (1 + 1e-4)
            assert norm == pytest.approx(min(raw, c), rel=1e-3)


def test_per_layer_clipping_bounds_each_layer(digits) -> None:
    train, _ = digits
    clf = _mlp(hidden=[32, 32])
    x, y = train.x[:1], train.y[:1]
    cfg = DPConfig(clip=1e-3, sigma=1e-9, batch_size=10, per_layer=True)
    grads = _clipped_single(clf, cfg, x, y)
    layers = [m for m in clf.modules() if isinstance(m, nn.Linear)]
    assert len(grads) == 2 * len(layers)
    bound = 1e-3 / len(layers) ** 0.5
    for k in range(len(layers)):
        n = torch.sqrt(grads[2 * k].pow(2).sum() + grads[2 * k + 1].pow(2).sum()).item()
        assert n == pytest.approx(bound, rel=1e-3)   # tiny bound: every layer is clipped to it


def test_ghost_matches_vmap(digits) -> None:
    train, _ = digits
    for clf in (_mlp(), _mlp(arch="cnn-small", channels=[4, 8], hidden=16)):
        x, y = train.x[:12], train.y[:12]
        g, v = make_engine(clf, "ghost"), make_engine(clf, "vmap")
        pg, pv = g.compute(clf, x, y), v.compute(clf, x, y)
        assert torch.allclose(pg.norms_sq, pv.norms_sq, rtol=1e-4, atol=1e-7)
        w = torch.rand(12, g.num_groups)
        for a, b in zip(pg.weighted_sum(w), pv.weighted_sum(w)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
        g.close()


@pytest.mark.parametrize("variant", ["baseline", "l2-max"])
def test_noise_scale(digits, variant: str) -> None:
    """Empty batch: the release is pure noise with std sigma * S / (q n). With one example
    and l2-max, S is that example's (clipped) gradient norm instead of C."""
    train, _ = digits
    clf = _mlp()
    cfg = DPConfig(clip=3.0, sigma=2.0, batch_size=50, variant=variant)
    dp = DPSGD(clf, cfg, n=1000)
    grads, info = dp.privatize(train.x[:0], train.y[:0])
    noise = torch.cat([g.flatten() for g in grads]) * dp.expected_batch
    assert noise.numel() > 2000
    assert noise.mean().item() == pytest.approx(0.0, abs=4 * 6.0 / noise.numel() ** 0.5)
    assert noise.std().item() == pytest.approx(2.0 * 3.0, rel=0.06)
    assert info.sensitivity == 3.0
    if variant == "l2-max":
        x, y = train.x[:1], train.y[:1]
        raw = make_engine(clf, "vmap").compute(clf, x, y).norms_sq.sum().sqrt().item()
        big = DPSGD(clf, DPConfig(clip=100 * raw, sigma=2.0, batch_size=50, variant=variant), n=1000)
        grads, info = big.privatize(x, y)
        assert info.sensitivity == pytest.approx(raw, rel=1e-4)
        assert info.noise_std == pytest.approx(2.0 * raw, rel=1e-4)


def test_decay_policies() -> None:
    lin = Decay("linear", 4.0, 2.0, 101)
    assert lin(0) == 4.0 and lin(100) == pytest.approx(2.0) and lin(50) == pytest.approx(3.0)
    exp = Decay("exp", 6.0, 3.0, 11)
    assert exp(10) == pytest.approx(3.0) and exp(5) == pytest.approx(6.0 / 2**0.5)
    cyc = Decay("cyclic", 4.0, 1.0, 100, half_period=10)
    vals = [cyc(t) for t in range(100)]
    assert vals[0] == 4.0 and vals[10] == pytest.approx(1.0) and 1.0 < vals[20] < 4.0
    assert min(vals) == pytest.approx(1.0) and max(vals) == 4.0
    with pytest.raises(ConfigError):
        Decay("linear", 2.0, 3.0, 10)
    with pytest.raises(ConfigError):
        Decay("sawtooth", 2.0, 1.0, 10)


def test_dynamic_sigma_is_accounted(digits) -> None:
    train, _test = digits
    cfg = DPConfig(variant="dyn-s-sigma", decay="exp", sigma=6.0, sigma_final=3.0, clip=4.0,
                   batch_size=64, steps=12, lr=0.05, momentum=0.0, progress=False)
    res = train_dp(_mlp(), train, None, cfg)
    sig = res.trace["sigma"]
    assert sig[0] == 6.0 and sig[-1] == pytest.approx(3.0) and res.steps == 12
    from bastion.privacy import compute_epsilons
    raw = compute_epsilons(64 / len(train), sig, None, 1e-5)
    for name in ("rdp", "moments"):
        assert res.epsilon[name] == pytest.approx(raw[name])
    # sigma ends at 3 < 4.84: the composition formulas are invalid and not shown
    assert res.epsilon["basic"] is None and res.epsilon["zcdp"] is None
    assert res.privacy["headline"]["epsilon"] <= res.epsilon["rdp"]
    c = res.trace["clip"]
    assert c[0] == 4.0 and c[-1] == pytest.approx(2.0)
    assert all(s <= cc + 1e-9 for s, cc in zip(res.trace["sensitivity"], c))


def test_budget_stop(digits) -> None:
    train, _ = digits
    cfg = DPConfig(sigma=2.0, clip=1.0, batch_size=100, steps=1000, target_epsilon=1.0, lr=0.05,
                   progress=False)
    res = train_dp(_mlp(), train, None, cfg)
    assert res.stop_reason == "budget" and 0 < res.steps < 1000
    assert res.epsilon["rdp"] <= 1.0
    from bastion.privacy import compute_epsilon
    assert compute_epsilon(100 / len(train), 2.0, res.steps + 1, 1e-5) > 1.0


@pytest.mark.filterwarnings("ignore:DP noise seeded")
def test_l2max_beats_baseline_at_large_clip(digits) -> None:
    train, test = digits
    acc = {}
    for variant in ("baseline", "l2-max"):
        cfg = DPConfig(variant=variant, clip=32.0, sigma=6.0, batch_size=256, steps=80, lr=0.05,
                       momentum=0.0, progress=False, noise_seed=0)
        acc[variant] = train_dp(_mlp(hidden=[64]), train, test, cfg).test_accuracy
    assert acc["l2-max"] > acc["baseline"] + 0.1, acc


@pytest.mark.filterwarnings("ignore:DP noise seeded")
@pytest.mark.parametrize("variant", ["quantile", "adaclip", "dyn-sigma", "cdecay"])
def test_comparators_run(digits, variant: str) -> None:
    train, test = digits
    cfg = DPConfig(variant=variant, clip=2.0, sigma=1.0, batch_size=128, steps=30, lr=0.1,
                   momentum=0.0, progress=False, noise_seed=0)
    res = train_dp(_mlp(), train, test, cfg)
    assert res.steps == 30 and res.test_accuracy > 0.15   # chance is 0.1
    if variant == "quantile":
        assert res.trace["clip"][-1] != 2.0     # the bound adapts


def test_batchnorm_refused_or_fixed(digits) -> None:
    clf = build_classifier("resnet", InputSpec((1, 8, 8)), 10, {"depth": 8}, device="cpu")
    with pytest.raises(ConfigError, match="GroupNorm"):
        DPSGD(clf, DPConfig(), n=1000)
    DPSGD(clf, DPConfig(fix_batchnorm=True), n=1000).close()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in clf.modules())


@pytest.mark.parametrize("kwargs", [dict(delta=1.0), dict(delta=2.0), dict(sigma=0.0), dict(sigma=-1.0),
                                    dict(clip=0.0), dict(clip=-2.0), dict(batch_size=5000),
                                    dict(variant="magic"), dict(decay="sawtooth"), dict(engine="jax"),
                                    dict(accountant="zcdp"), dict(accountant="basic"),
                                    dict(noise_seed=-1), dict(noise_seed=2**64), dict(noise_seed=1.5)])
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        DPSGD(_mlp(), DPConfig(**kwargs), n=1000)


def test_unsupported_layer_for_ghost() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(64))
            self.out = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x.flatten(1) * self.scale)

    clf = Classifier(Odd(), InputSpec((1, 8, 8)), 10, device="cpu")
    with pytest.raises(ConfigError, match="vmap"):
        make_engine(clf, "ghost")
    assert type(make_engine(clf, "auto")).__name__ == "VmapEngine"
