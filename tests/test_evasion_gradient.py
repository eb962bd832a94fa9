"""Gradient-based evasion attacks of part A: FGSM, BIM, PGD (Linf/L2/L1), MI-FGSM, APGD,
APGD-T, the AutoAttack-style ensemble, and the EOT/BPDA adaptive wrappers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import create, registry
from bastion.attacks.evasion import BPDA, EOT, select_targets
from bastion.attacks.evasion.apgd import checkpoints, dlr_loss
from bastion.attacks.evasion.pgd import project_l1
from bastion.core import Classifier, ConfigError, InputError, InputSpec

N = 16


@pytest.fixture(scope="module")
def batch(correct_batch):
    x, y = correct_batch
    return x[:N], y[:N]


def _l1(r):
    return (r.x_adv - r.x).abs().flatten(1).sum(1)


def _in_budget(r, norm, eps):
    lo, hi = 0.0, 1.0
    assert float(r.x_adv.min()) >= lo - 1e-6 and float(r.x_adv.max()) <= hi + 1e-6
    d = {"linf": r.norms["linf"], "l2": r.norms["l2"], "l1": _l1(r)}[norm]
    assert float(d.max()) <= eps * (1 + 1e-4) + 1e-5, f"{norm} budget {eps} exceeded: {float(d.max())}"


# --------------------------------------------------------------------------- untargeted


@pytest.mark.parametrize("name,params", [
    ("fgsm", {}),
    ("bim", {"alpha": 0.03, "steps": 10}),
    ("pgd", {"steps": 10, "alpha": 0.03}),
    ("mifgsm", {}),
    ("apgd", {"steps": 10}),
    ("apgd", {"steps": 10, "loss": "dlr"}),
])
def test_linf_attacks_succeed_within_budget(small_model, batch, name, params):
    x, y = batch
    r = create(name, eps=0.3, **params)(small_model, x, y)
    _in_budget(r, "linf", 0.3)
    assert r.success_rate >= 0.9, f"{name} {params}: ASR {r.success_rate}"
    assert torch.equal(r.success, r.pred_adv != r.y)


@pytest.mark.parametrize("norm,eps", [("l2", 2.0), ("l1", 12.0)])
def test_pgd_l2_l1_beat_random_noise_of_same_norm(small_model, batch, norm, eps):
    x, y = batch
    r = create("pgd", norm=norm, eps=eps, steps=20)(small_model, x, y)
    _in_budget(r, norm, eps)
    # random noise with the same norm budget barely changes predictions
    torch.manual_seed(0)
    noise = torch.randn_like(x)
    p = 2 if norm == "l2" else 1
    noise = noise / noise.flatten(1).norm(p=p, dim=1).view(-1, 1, 1, 1) * eps
    rand_asr = float((small_model.predict((x + noise).clamp(0, 1)) != y).float().mean())
    assert r.success_rate >= 0.5 and r.success_rate >= rand_asr + 0.3, (r.success_rate, rand_asr)


def test_pgd_l1_steps_are_sparse(small_model, batch):
    x, y = batch
    r = create("pgd", norm="l1", eps=3.0, steps=1, alpha=3.0, random_start=False,
               l1_sparsity=0.99)(small_model, x[:4], y[:4])
    # one sparse step moves at most ceil(1% of 784) = 8 pixels per image
    assert int(r.norms["l0"].max()) <= 8
    assert float(r.norms["l0"].min()) >= 1


def test_apgd_t_untargeted_mode_succeeds(small_model, batch):
    x, y = batch
    r = create("apgd-t", eps=0.3, steps=10, n_target_classes=2)(small_model, x, y)
    _in_budget(r, "linf", 0.3)
    assert r.success_rate >= 0.9


def test_apgd_l2_within_budget(small_model, batch):
    x, y = batch
    r = create("apgd", norm="l2", eps=2.5, steps=15)(small_model, x, y)
    _in_budget(r, "l2", 2.5)
    assert r.success_rate >= 0.6


# --------------------------------------------------------------------------- targeted


@pytest.mark.parametrize("name,params", [
    ("fgsm", {"eps": 0.3}),
    ("bim", {"eps": 0.3, "alpha": 0.03, "steps": 10}),
    ("pgd", {"eps": 0.3, "steps": 10, "alpha": 0.03}),
    ("mifgsm", {"eps": 0.3}),
    ("apgd", {"eps": 0.3, "steps": 10}),
    ("apgd-t", {"eps": 0.3, "steps": 10}),
])
def test_targeted_attacks_reach_the_target(small_model, batch, name, params):
    x, y = batch
    t = select_targets(small_model, x, y, "most")
    r = create(name, **params)(small_model, x, y, t)
    _in_budget(r, "linf", 0.3)
    assert torch.equal(r.success, r.pred_adv == t)
    floor = 0.3 if name == "fgsm" else 0.8
    assert r.success_rate >= floor, f"{name}: targeted ASR {r.success_rate}"


def test_target_difficulty_ordering_most_next_ll(small_model, batch):
    x, y = batch
    atk = create("bim", eps=0.15, alpha=0.01, steps=15)
    rates = {m: atk(small_model, x, y, select_targets(small_model, x, y, m)).success_rate
             for m in ("most", "ll")}
    assert rates["most"] > rates["ll"]


# --------------------------------------------------------------------------- BIM details


def test_bim_schedule_follows_kurakin_and_caps_total_step():
    bim = create("bim", eps=0.3)
    alpha, steps = bim.schedule(1.0)
    assert alpha == pytest.approx(1 / 255)
    assert steps * alpha <= 0.3 + 1e-9 and steps == 76  # min(80, 95) capped at floor(0.3*255)
    alpha, steps = create("bim", eps=0.3, cap_total=False).schedule(1.0)
    assert steps == 80
    assert create("bim", eps=0.3, alpha=0.05, steps=20).schedule(1.0) == (0.05, 6)


def test_bim_early_stop_keeps_perturbation_smaller(small_model, batch):
    x, y = batch
    kw = {"eps": 0.3, "alpha": 0.02, "steps": 15}
    full = create("bim", **kw)(small_model, x, y)
    early = create("bim", early_stop=True, **kw)(small_model, x, y)
    assert early.success_rate >= full.success_rate - 0.07
    assert float(early.norms["l2"].mean()) < float(full.norms["l2"].mean())
    assert float(early.queries.mean()) < float(full.queries.mean())


# --------------------------------------------------------------------------- helpers


def test_project_l1_matches_bisection_reference():
    torch.manual_seed(0)
    v = torch.randn(6, 50) * 2
    eps = 3.0
    p = project_l1(v, eps)
    for i in range(6):
        a = v[i].abs()
        lo_t, hi_t = 0.0, float(a.max())
        for _ in range(100):  # theta with sum(max(|v| - theta, 0)) = eps
            mid = (lo_t + hi_t) / 2
            lo_t, hi_t = (mid, hi_t) if float((a - mid).clamp_min(0).sum()) > eps else (lo_t, mid)
        ref = v[i].sign() * (a - lo_t).clamp_min(0)
        assert torch.allclose(p[i], ref, atol=1e-4)
    inside = torch.full((1, 50), 0.01)
    assert torch.equal(project_l1(inside, eps), inside)


def test_apgd_checkpoints_follow_the_paper_schedule():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 for N = 100
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_loss_is_shift_and_scale_invariant():
    torch.manual_seed(0)
    z, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(dlr_loss(z, y), dlr_loss(3.0 * z + 7.0, y), atol=1e-5)


def test_fast_flag_is_accepted_on_cpu_and_changes_nothing(small_model, batch, monkeypatch):
    import bastion.attacks.evasion.pgd as pgd_mod

    monkeypatch.setattr(pgd_mod, "_NOTICED", set())  # the notice is shown once per process
    x, y = batch[0][:4], batch[1][:4]
    eager = create("pgd", steps=3)(small_model, x, y)
    with pytest.warns(UserWarning, match="fast=True"):
        fast = create("pgd", steps=3, fast=True)(small_model, x, y)
    assert torch.equal(eager.x_adv, fast.x_adv)


# --------------------------------------------------------------------------- ensemble


class _Quantized(nn.Module):
    """A 'defended' net: input quantisation to levels+1 values (zero gradients)."""

    def __init__(self, inner: nn.Module, levels: int = 1) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


def test_autoattack_breaks_undefended_model(small_model, batch):
    x, y = batch
    r = create("autoattack", eps=0.3, steps=10, n_target_classes=2, square_queries=50)(
        small_model, x[:8], y[:8])
    _in_budget(r, "linf", 0.3)
    assert r.robust_accuracy == 0.0
    flags = r.extras["flags"]
    assert not flags["zero_gradients"] and not flags["randomized"]
    assert r.extras["robust_after"]["apgd-ce"] == 0.0


@pytest.mark.slow
def test_autoattack_flags_gradient_masking(small_model, batch):
    x, y = batch
    masked = Classifier(_Quantized(small_model.module), small_model.spec, 10, device="cpu")
    stages = ("apgd-ce", "square") if "square" in registry.names() else ("apgd-ce",)
    with pytest.warns(UserWarning) as caught:
        r = create("autoattack", eps=0.3, steps=5, square_queries=300, attacks=stages)(
            masked, x[:8], y[:8])
    assert any("zero input gradients" in str(w.message) for w in caught)
    assert r.extras["flags"]["zero_gradients"]
    if "square" in stages:
        assert r.extras["flags"]["black_box_beats_white_box"]


def test_autoattack_flags_randomised_model(small_model, batch):
    x, y = batch
    noisy = Classifier(_Noisy(small_model.module, 0.2), small_model.spec, 10, device="cpu")
    with pytest.warns(UserWarning, match="randomised"):
        r = create("autoattack", eps=0.3, steps=3, attacks=("apgd-ce",))(noisy, x[:4], y[:4])
    assert r.extras["flags"]["randomized"]


# --------------------------------------------------------------------------- EOT / BPDA


class _Noisy(nn.Module):
    def __init__(self, inner: nn.Module, sigma: float) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn_like(x))


def _grad(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, x)[0].flatten()


def test_eot_averages_draws_and_stabilises_gradients(small_model, batch):
    x, y = batch[0][:2], batch[1][:2]
    det = EOT(small_model, samples=4)
    assert torch.allclose(det(x), small_model(x), atol=1e-5)  # deterministic model: same logits
    probs = EOT(small_model, samples=3, reduce="probs")
    assert torch.allclose(probs(x).softmax(-1), small_model(x).softmax(-1), atol=1e-5)
    noisy = Classifier(_Noisy(small_model.module, 0.5), small_model.spec, 10, device="cpu")
    torch.manual_seed(0)
    cos = nn.functional.cosine_similarity
    single = cos(_grad(noisy, x, y), _grad(noisy, x, y), dim=0)
    eot = EOT(noisy, samples=64, chunk=32)
    averaged = cos(_grad(eot, x, y), _grad(eot, x, y), dim=0)
    assert float(averaged) > 0.8 and float(averaged) > float(single) + 0.2


def test_bpda_restores_gradients_through_quantisation(small_model, batch):
    x, y = batch
    quant = Classifier(_Quantized(small_model.module, 7), small_model.spec, 10, device="cpu")
    atk = create("pgd", eps=0.3, steps=10, alpha=0.05)
    naive = atk(quant, x, y)
    bpda_model = BPDA(small_model, lambda t: torch.round(t * 7) / 7)
    adaptive = atk(bpda_model, x, y)
    # same forward function as the quantised model, but useful gradients
    assert torch.equal(bpda_model.predict(x), quant.predict(x))
    assert adaptive.success_rate >= naive.success_rate + 0.3, (adaptive.success_rate,
                                                               naive.success_rate)


def test_bpda_custom_backward_is_used(small_model, batch):
    x = batch[0][:2].clone().requires_grad_(True)
    m = BPDA(small_model, torch.round, backward=lambda t: 0.0 * t)
    m(x).sum().backward()
    assert float(x.grad.abs().max()) == 0.0


# --------------------------------------------------------------------------- bad input


class _Softmax(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(-1)


def test_bad_parameters_fail_fast():
    with pytest.raises(ConfigError, match="eps"):
        create("pgd", eps=-0.1)
    with pytest.raises(ConfigError, match="norm"):
        create("pgd", norm="l7")
    with pytest.raises(ConfigError, match="norm"):
        create("mifgsm", norm="l1")
    with pytest.raises(ConfigError, match="absurd"):
        create("pgd", eps=5000.0)
    with pytest.raises(ConfigError, match="loss"):
        create("apgd", loss="hinge")
    with pytest.raises(ConfigError):
        create("apgd", steps=0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        create("pgd", epsilon=0.3)
    with pytest.raises(ConfigError, match="stage"):
        create("autoattack", attacks=("fgsm",))
    with pytest.raises(ConfigError):
        EOT(Classifier(nn.Flatten(), InputSpec((1, 28, 28)), 10, device="cpu"), samples=0)


def test_bad_inputs_fail_fast(small_model, batch):
    x, y = batch[0][:4], batch[1][:4]
    pgd = create("pgd", steps=2)
    with pytest.raises(InputError, match="outside"):
        pgd(small_model, x * 2 + 0.5, y)
    with pytest.raises(InputError, match="labels outside"):
        pgd(small_model, x, y, torch.full_like(y, 10))
    with pytest.raises(InputError, match="differ"):
        pgd(small_model, x, y, y.clone())
    probs = Classifier(_Softmax(small_model.module), small_model.spec, 10, device="cpu")
    with pytest.raises(InputError, match="probabilities"):
        pgd(probs, x, y)
    with pytest.raises(ConfigError, match="exceeds"):
        create("pgd", eps=8.0, steps=2)(small_model, x, y)
    with pytest.raises(ConfigError, match="exceeds"):
        create("apgd", norm="l2", eps=100.0, steps=2)(small_model, x, y)
    with pytest.raises(ConfigError, match="untargeted"):
        create("autoattack")(small_model, x, y, (y + 1) % 10)
    binary = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), small_model.spec, 2, device="cpu")
    with pytest.raises(InputError, match="DLR"):
        create("apgd", loss="dlr", steps=2)(binary, x, y % 2)
