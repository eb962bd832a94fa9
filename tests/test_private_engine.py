"""PrivacyEngine: DP-SGD inside the user's own training loop."""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data import load
from bastion.privacy.accountants import GUARANTEES, compute_epsilon, pld_available, prv_available
from bastion.privacy.statement import dp_statement
from bastion.training.dp import DPSGD, DPConfig
from bastion.training.private import DPOptimizer, PrivacyEngine

SEED = 7
SIGMA, CLIP = 1.3, 0.7


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load("digits", "train")
    return d.x, d.y


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 64, 10))


def seeded(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def private_grads(module: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, batch: int,
                  reduction: str = "mean", **kw) -> list[torch.Tensor]:
    """The gradient one facade step releases on (x, y): with SGD at lr 1, old - new."""
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(torch.zeros(n, 1), torch.zeros(n)), batch_size=batch)
    eng = PrivacyEngine()
    model, popt, _ = seeded(eng.make_private, module=module, optimizer=opt, data_loader=loader,
                            noise_multiplier=SIGMA, max_grad_norm=CLIP, noise_seed=SEED,
                            loss_reduction=reduction, **kw)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    popt.zero_grad()
    F.cross_entropy(model(x), y, reduction=reduction).backward()
    popt.step()
    return [b - p.detach() for b, p in zip(before, model.parameters())]


def hand_grads(module: nn.Module, x: torch.Tensor, y: torch.Tensor, expected: float,
               per_layer: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Abadi et al.'s step by hand: torch.func per-example gradients, clip to C, sum, add
    N(0, sigma^2 C^2) from a generator seeded like the facade's, divide by q N. Returns the
    noisy gradient and the clipped mean without noise."""
    names = [n for n, _ in module.named_parameters()]
    params = {n: p.detach() for n, p in module.named_parameters()}

    def loss(prm, xi, yi):
        return F.cross_entropy(functional_call(module, prm, (xi[None],)), yi[None])

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    b = x.shape[0]
    flat = torch.cat([per[n].reshape(b, -1) for n in names], 1)
    w = (CLIP / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)
    clipped = [torch.einsum("b,b...->...", w, per[n]) for n in names]
    gen = torch.Generator().manual_seed(SEED)
    noisy = [(c + torch.randn(c.shape, generator=gen) * SIGMA * CLIP) / expected for c in clipped]
    return noisy, [c / expected for c in clipped]


# --------------------------------------------------------------------------- the mechanism


def test_step_equals_hand_computation_of_clip_sum_noise(digits) -> None:
    x, y = digits[0][:40], digits[1][:40]
    n, batch = 1000, 50                                         # expected batch 50, actual 40
    got = private_grads(mlp(), x, y, n, batch)
    want, _ = hand_grads(mlp(), x, y, expected=batch)
    for g, h in zip(got, want):
        assert torch.allclose(g, h, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("engine", ["ghost", "vmap"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_equals_dpsgd_privatize_on_the_same_batch(digits, engine: str, reduction: str) -> None:
    x, y = digits[0][:48], digits[1][:48]
    n, batch = 800, 32
    ref = Classifier(cnn(), InputSpec((1, 8, 8), mean=(0.3,), std=(0.4,)), 10, device="cpu")
    cfg = DPConfig(sigma=SIGMA, clip=CLIP, batch_size=batch, noise_seed=SEED, engine=engine,
                   per_layer=True)
    dp = seeded(DPSGD, copy.deepcopy(ref), cfg, n)
    want, info = dp.privatize(x, y)
    got = private_grads(copy.deepcopy(ref), x, y, n, batch, reduction=reduction, per_layer=True)
    assert info.batch == 48 and info.noise_std == pytest.approx(SIGMA * CLIP)
    for g, h in zip(got, want):
        assert torch.allclose(g, h, atol=1e-6, rtol=1e-4)


def test_adaclip_steps_equal_dpsgd_with_materialised_gradients(digits) -> None:
    x, y = digits[0][:40], digits[1][:40]
    n, batch = 400, 40
    ref = Classifier(cnn(), InputSpec((1, 8, 8)), 10, device="cpu")
    cfg = DPConfig(sigma=SIGMA, clip=CLIP, batch_size=batch, noise_seed=SEED, variant="adaclip",
                   engine="vmap", lr=1.0, momentum=0.0)
    dp = seeded(DPSGD, ref, cfg, n)
    module = cnn()
    eng = PrivacyEngine()
    model, opt, _ = seeded(eng.make_private, module=module,
                           optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
                           data_loader=DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch),
                           noise_multiplier=SIGMA, max_grad_norm=CLIP, noise_seed=SEED,
                           variant="adaclip")
    for _ in range(3):                                  # AdaClip's moving estimates evolve alike
        dp.step(x, y)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for p, q in zip(model.parameters(), ref.module.parameters()):
            assert torch.allclose(p, q, atol=1e-5, rtol=1e-4)
    assert eng.get_epsilon(1e-5) == pytest.approx(dp.ledger.epsilon(1e-5, "rdp"))


def test_noise_is_secure_by_default_and_seeded_noise_warns(digits) -> None:
    x, y = digits[0][:16], digits[1][:16]
    loader = DataLoader(TensorDataset(x, y), batch_size=8)

    def one_step(**kw):
        m = mlp()
        eng = PrivacyEngine()
        model, opt, _ = eng.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=1.0),
                                         data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, **kw)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()]), eng

    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # secure mode: no warning
        a, eng = one_step()
        b, _ = one_step()
    assert not torch.equal(a, b)                                # fresh CSPRNG seed each run
    assert eng.dp.cfg.noise_mode == "secure"
    with pytest.warns(UserWarning, match="NOT private"):
        c, eng = one_step(noise_seed=3)
    with pytest.warns(UserWarning, match="NOT private"):
        d, _ = one_step(noise_seed=3)
    assert torch.equal(c, d)
    assert "NOT private" in eng.dp.cfg.noise_mode


def test_opacus_gives_the_same_clipped_per_sample_gradients(digits) -> None:
    opacus = pytest.importorskip("opacus")
    x, y = digits[0][:30], digits[1][:30]
    batch = 30
    got = private_grads(cnn(), x, y, 600, batch)
    gsm = opacus.GradSampleModule(cnn())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        F.cross_entropy(gsm(x), y).backward()
    per = [p.grad_sample for p in gsm.parameters()]
    norms = torch.cat([g.reshape(len(y), -1) for g in per], 1).norm(dim=1)
    w = (CLIP / (norms + 1e-6)).clamp(max=1.0)
    gen = torch.Generator().manual_seed(SEED)
    for g, ps in zip(got, per):
        noise = torch.randn(ps.shape[1:], generator=gen) * SIGMA * CLIP
        clipped_sum = g * batch - noise                         # undo averaging and noise
        assert torch.allclose(clipped_sum, torch.einsum("b,b...->...", w, ps), atol=1e-4)


class Scale(nn.Module):
    """A custom layer without a ghost rule (per-example gradients by torch.func)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Embedding(17, 5), nn.Flatten(), nn.Linear(5 * 6, 10)),
    lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"), nn.Tanh(),
                          nn.Flatten(), Scale(3 * 64), nn.Linear(3 * 64, 10)),
])
def test_layers_without_a_ghost_rule_use_torch_func(digits, make) -> None:
    x = torch.randint(0, 17, (24, 6)) if isinstance(make()[0], nn.Embedding) else digits[0][:24]
    y = digits[1][:24]
    torch.manual_seed(1)
    module = make()
    got = private_grads(copy.deepcopy(module), x, y, 500, 20)
    want, _ = hand_grads(module, x, y, expected=20)
    for g, h in zip(got, want):
        assert torch.allclose(g, h, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- accounting


def test_get_epsilon_matches_the_accountant_for_the_steps_taken(digits) -> None:
    x, y = digits
    m = mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=100)
    eng = PrivacyEngine(accountant="rdp")
    model, opt, ploader = eng.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                                           data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0)
    assert eng.get_epsilon(1e-5) == 0.0
    sizes = []
    for xb, yb in ploader:
        sizes.append(len(yb))
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    q = 100 / len(x)
    assert len(sizes) == round(len(x) / 100) == eng.steps == opt.steps
    assert len(set(sizes)) > 1 and abs(sum(sizes) / len(sizes) - 100) < 30   # Poisson sizes
    assert eng.sample_rate == pytest.approx(q)
    for acc in ("rdp", "moments", "pld", "prv"):
        if (acc == "pld" and not pld_available()) or (acc == "prv" and not prv_available()):
            continue
        want = compute_epsilon(q, 1.1, eng.steps, 1e-5, acc)
        assert eng.get_epsilon(1e-5, acc) == pytest.approx(want, rel=1e-9)
    record = eng.privacy_record(1e-5)          # the labelled summary and the DP statement
    assert record["headline"]["accountant"] in GUARANTEES
    assert record["accountants"]["rdp"]["kind"] == "guarantee"
    assert record["noise"] == "secure" and record["steps"] == eng.steps
    text = " ".join(dp_statement(record))
    assert f"{eng.steps} steps" in text and "Noise: secure" in text


def test_make_private_with_epsilon_hits_the_target_and_never_exceeds_it(digits) -> None:
    x, y = digits
    m = mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    eng = PrivacyEngine()
    model, opt, ploader = eng.make_private_with_epsilon(
        module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.05), data_loader=loader,
        target_epsilon=1.5, target_delta=1e-5, epochs=2, max_grad_norm=1.0)
    for _ in range(2):
        for xb, yb in ploader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    eps = eng.get_epsilon(1e-5)
    assert 1.5 * 0.99 <= eps <= 1.5
    assert eps == pytest.approx(compute_epsilon(64 / len(x), eng.noise_multiplier, eng.steps, 1e-5))
    xb, yb = next(iter(ploader))
    F.cross_entropy(model(xb), yb).backward()
    with pytest.raises(ConfigError, match="privacy budget is spent"):
        opt.step()
    assert eng.get_epsilon(1e-5) == eps


def test_dynamic_variants_are_charged_their_schedule(digits) -> None:
    x, y = digits
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    m = mlp()
    eng = PrivacyEngine()
    model, opt, ploader = eng.make_private(
        module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=2.0, max_grad_norm=2.0, variant="dyn-sigma", epochs=1, sigma_final=1.0)
    sigmas, clips = [], []
    for xb, yb in ploader:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        assert isinstance(opt, DPOptimizer) and opt.last_step is not None
        sigmas.append(opt.last_step.sigma)
        clips.append(opt.last_step.clip)
    assert sigmas[0] == pytest.approx(2.0) and sigmas[-1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(sigmas, sigmas[1:])) and set(clips) == {2.0}
    want = compute_epsilon(128 / len(x), sigmas, None, 1e-5, "rdp")
    assert eng.get_epsilon(1e-5) == pytest.approx(want, rel=1e-9)

    m = mlp()
    eng = PrivacyEngine()
    model, opt, ploader = eng.make_private(
        module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=5.0, variant="quantile", count_noise=10.0)
    for xb, yb in ploader:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    assert opt.last_step is not None and opt.last_step.clip < 5.0   # adapted towards the median


def test_empty_poisson_batches_flow_through_the_loop() -> None:
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    m = mlp()
    eng = PrivacyEngine()
    model, opt, ploader = eng.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                                           data_loader=DataLoader(TensorDataset(x, y), batch_size=1),
                                           noise_multiplier=1.0, max_grad_norm=1.0)
    sizes = []
    for xb, yb in ploader:
        sizes.append(len(yb))
        assert xb.shape[1:] == (1, 8, 8)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb, reduction="sum").backward()
        opt.step()
    assert 0 in sizes and eng.steps == 40
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fixed_size_batches_keep_the_loader_and_warn(digits) -> None:
    x, y = digits
    m = mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=200, shuffle=True)
    eng = PrivacyEngine()
    with pytest.warns(UserWarning, match="not Poisson-sampled"):
        model, opt, same = eng.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                                            data_loader=loader, noise_multiplier=1.0,
                                            max_grad_norm=1.0, poisson_sampling=False)
    assert same is loader
    for xb, yb in same:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    assert eng.steps == len(loader)
    assert eng.get_epsilon(1e-5) == pytest.approx(compute_epsilon(200 / len(x), 1.0, eng.steps, 1e-5))
    eng.detach()                                   # hooks gone: plain training again
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    with pytest.raises(ConfigError, match="needs a forward pass"):
        opt.step()


def test_lr_scheduler_and_state_dict_work_on_the_private_optimizer(digits) -> None:
    m = mlp()
    eng = PrivacyEngine()
    _, opt, _ = eng.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                                 data_loader=DataLoader(TensorDataset(*digits), batch_size=64),
                                 noise_multiplier=1.0, max_grad_norm=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    F.cross_entropy(m(digits[0][:8]), digits[1][:8]).backward()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.state_dict()["param_groups"][0]["lr"] == pytest.approx(0.05)


# --------------------------------------------------------------------------- training


def test_private_training_of_an_mlp_on_digits_reaches_sensible_accuracy() -> None:
    spec = importlib.util.spec_from_file_location(
        "dp_own_loop", Path(__file__).resolve().parents[1] / "examples" / "dp_own_loop.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = seeded(example.main, epochs=8, noise_seed=2, verbose=False)
    assert out["test_accuracy"] >= 0.8                          # chance is 0.1
    assert 0 < out["epsilon"] < 6 and out["steps"] == 8 * 22


# --------------------------------------------------------------------------- refusals


def _args(module: nn.Module | None = None, **kw):
    m = module or mlp()
    base = dict(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                data_loader=DataLoader(TensorDataset(torch.rand(50, 1, 8, 8),
                                                     torch.randint(0, 10, (50,))), batch_size=10),
                noise_multiplier=1.0, max_grad_norm=1.0)
    base.update(kw)
    return base


@pytest.mark.parametrize("kw, pattern", [
    ({"noise_multiplier": 0.0}, "noise_multiplier must be a positive number, got 0.0"),
    ({"noise_multiplier": -1}, "noise_multiplier must be a positive"),
    ({"max_grad_norm": 0}, "max_grad_norm must be a positive number"),
    ({"max_grad_norm": math.inf}, "max_grad_norm must be a positive number"),
    ({"variant": "cdecay"}, "pass epochs="),
    ({"variant": "nope"}, "DP-SGD variant"),
    ({"loss_reduction": "none"}, "loss_reduction must be 'mean' or 'sum'"),
    ({"data_loader": [1, 2]}, "data_loader must be a torch DataLoader"),
    ({"noise_seed": -1}, "noise_seed must be an integer"),
])
def test_bad_input_is_one_config_error_line(kw, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern) as e:
        PrivacyEngine().make_private(**_args(**kw))
    assert "\n" not in str(e.value)


def test_models_without_per_example_gradients_are_refused() -> None:
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ConfigError, match="BatchNorm.*use GroupNorm instead") as e:
        PrivacyEngine().make_private(**_args(bn))
    assert "\n" not in str(e.value)
    class Mixed(nn.Module):          # own parameter plus a parameterised sub-layer
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) * self.scale

    with pytest.raises(ConfigError, match="owns parameters and also has parameterised sub-layers"):
        PrivacyEngine().make_private(**_args(Mixed()))
    tied = nn.Sequential(nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10))
    tied[2].weight = tied[0].weight
    with pytest.raises(ConfigError, match="tied weights"):
        PrivacyEngine().make_private(**_args(tied))
    rnn = nn.GRU(8, 4, batch_first=True)
    _, opt, _ = PrivacyEngine().make_private(**_args(rnn))
    with pytest.raises(ConfigError, match="returns tuple, not one tensor"):
        rnn(torch.rand(2, 8, 8))
    with pytest.raises(ConfigError, match="reference formula"):
        PrivacyEngine(accountant="basic")
    other = nn.Linear(3, 3)
    m = mlp()
    opt = torch.optim.SGD([*m.parameters(), *other.parameters()], lr=0.1)
    with pytest.raises(ConfigError, match="not the module's"):
        PrivacyEngine().make_private(**_args(m, optimizer=opt))
    with pytest.raises(ConfigError, match="make_private_with_epsilon calibrates a constant sigma"):
        a = _args()
        a.pop("noise_multiplier")
        PrivacyEngine().make_private_with_epsilon(**a, target_epsilon=1.0, target_delta=1e-5,
                                                  epochs=1, variant="dyn-sigma")


def test_the_loop_is_checked_at_step_time(digits) -> None:
    x, y = digits[0][:8], digits[1][:8]
    eng = PrivacyEngine()
    model, opt, _ = eng.make_private(**_args())
    with pytest.raises(ConfigError, match="needs a forward pass"):
        opt.step()
    loss = F.cross_entropy(model(x), y)
    with pytest.raises(ConfigError, match="before loss.backward"):
        opt.step()
    loss.backward()
    with pytest.raises(ConfigError, match="gradient accumulation"):
        model(x)
    opt.zero_grad()
    first = F.cross_entropy(model(x), y)
    second = F.cross_entropy(model(x[:4]), y[:4])    # supersedes the first pass
    with pytest.raises(ConfigError, match="superseded"):
        (first + second).backward()                  # a loss over two passes
    opt.zero_grad()
    shared = nn.Linear(64, 64)
    twice = nn.Sequential(nn.Flatten(), shared, nn.Tanh(), shared, nn.Linear(64, 10))
    PrivacyEngine().make_private(**_args(twice))
    with pytest.raises(ConfigError, match="superseded"):
        F.cross_entropy(twice(x), y).backward()      # weight sharing
    model(x)                                     # a forward without backward is discarded
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert eng.steps == 1
    with torch.no_grad():                        # evaluation passes are not recorded
        model(x)
    with pytest.raises(ConfigError, match="needs a forward pass"):
        opt.step()
    with pytest.raises(ConfigError, match="already trains a model"):
        eng.make_private(**_args())


def test_dpsgd_sends_tied_weights_to_the_vmap_engine() -> None:
    """The ghost rules would clip each layer's part of a tied parameter's gradient apart and
    keep one part; 'auto' therefore picks vmap, and 'ghost' refuses."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10))
    m[2].weight = m[0].weight
    clf = Classifier(m, InputSpec((10,)), 10, device="cpu")
    x, y = torch.rand(8, 10), torch.randint(0, 10, (8,))
    grads = {}
    for engine in ("auto", "vmap"):
        dp = seeded(DPSGD, clf, DPConfig(sigma=1.0, clip=1.0, batch_size=8, noise_seed=1,
                                         engine=engine), 100)
        assert len(dp.params) == 3
        grads[engine], _ = dp.privatize(x, y)
    for a, b in zip(grads["auto"], grads["vmap"]):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="tied to another layer"):
        seeded(DPSGD, clf, DPConfig(batch_size=8, engine="ghost"), 100)
