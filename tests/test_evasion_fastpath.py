"""The fixed-shape fast path (bastion.attacks.evasion.fastpath): mode resolution, the shared
step functions against an independent reference loop, and the CPU fallbacks. The CUDA-graph
replay itself runs only where CUDA exists (skipped otherwise)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bastion.attacks import create
from bastion.attacks.evasion import BIM, PGD, fastpath
from bastion.attacks.evasion.pgd import random_start
from bastion.core import ConfigError

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def batch(correct_batch):
    x, y = correct_batch
    return x[:16], y[:16]


def _reference_pgd(model, x0, y, eps, alpha, steps, norm, seed=0, target=None):
    """An independent eager PGD loop (the textbook update, written out here)."""
    lo, hi = model.spec.bounds
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    x = random_start(x0, norm, eps, gen, lo, hi)
    labels = y if target is None else target
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xr), labels, reduction="sum")
        (g,) = torch.autograd.grad(-loss if target is not None else loss, xr)
        if norm == "linf":
            x = torch.max(torch.min(x + alpha * g.sign(), (x0 + eps).clamp(lo, hi)),
                          (x0 - eps).clamp(lo, hi))
        else:
            x = x + alpha * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            d = x - x0
            n = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x = (x0 + d * (eps / n.clamp_min(1e-12)).clamp(max=1.0)).clamp_(lo, hi)
    return x


def _reference_bim(model, x0, y, eps, alpha, steps, early_stop, target=None):
    lo, hi = model.spec.bounds
    labels = y if target is None else target
    x, active = x0.clone(), torch.ones(x0.shape[0], dtype=torch.bool)
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (g,) = torch.autograd.grad(-loss if target is not None else loss, xr)
        step = alpha * g.sign()
        if early_stop:
            pred = logits.argmax(-1)
            active &= ~(pred == target if target is not None else pred != y)
            step = step * active.view(-1, 1, 1, 1)
        x = torch.max(torch.min(x + step, (x0 + eps).clamp(lo, hi)), (x0 - eps).clamp(lo, hi))
    return x


# --------------------------------------------------------------------------- modes


def test_mode_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert fastpath.resolve("pgd", "off", cpu) is False
    assert fastpath.resolve("pgd", "auto", cpu) is False
    with pytest.raises(ConfigError, match="CUDA device"):
        fastpath.resolve("pgd", "cuda-graph", cpu)
    with pytest.raises(ConfigError, match="fast_path must be one of"):
        fastpath.resolve("pgd", "turbo", cpu)
    # YAML reads a bare `off` (config files, --arg fast_path=off) as False
    assert fastpath.canonical_mode("pgd", False) == "off"
    assert fastpath.canonical_mode("pgd", "Auto") == "auto"


def test_unknown_mode_fails_at_construction():
    with pytest.raises(ConfigError, match="fast_path"):
        create("pgd", fast_path="graph")
    with pytest.raises(ConfigError, match="fast_path"):
        create("bim", fast_path="yes")


@pytest.mark.skipif(CUDA, reason="checks the CPU refusal")
@pytest.mark.parametrize("name", ["pgd", "bim"])
def test_cuda_graph_on_cpu_is_a_config_error_before_work(small_model, batch, name):
    x, y = batch
    calls = []
    hook = small_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ConfigError, match="cuda-graph"):
            create(name, steps=3, fast_path="cuda-graph")(small_model, x, y)
    finally:
        hook.remove()
    assert len(calls) <= 1  # only the probability check of the base class ran, no attack step


# --------------------------------------------------------------------------- eager == attack


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.3, 0.01), ("l2", 2.0, 0.25)])
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_step_eager_equals_reference_bit_for_bit(small_model, batch, norm, eps, alpha,
                                                     targeted):
    x, y = batch
    t = (y + 1) % 10 if targeted else None
    # attacks run in the model's fast layout (channels-last on CPU); the reference too
    with small_model.fast_layout():
        ref = _reference_pgd(small_model, x, y, eps, alpha, 6, norm, seed=3, target=t)
    for mode in ("off", "auto"):
        r = PGD(eps=eps, alpha=alpha, steps=6, norm=norm, seed=3, fast_path=mode)(small_model,
                                                                                  x, y, t)
        assert torch.equal(r.x_adv, ref), mode
    # the step function driven by the loop directly gives the same bits
    lo, hi = small_model.spec.bounds
    step = fastpath.pgd_step(small_model, norm, alpha, eps, lo, hi, targeted)
    gen = torch.Generator().manual_seed(3)
    x_start = random_start(x, norm, eps, gen, lo, hi)
    with small_model.fast_layout():
        (out,) = fastpath.StepLoop(step).run((x_start,), (x, y if t is None else t,
                                                         (x - eps).clamp(lo, hi),
                                                         (x + eps).clamp(lo, hi)), 6)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("early_stop", [False, True])
def test_bim_step_eager_equals_reference_bit_for_bit(small_model, batch, early_stop):
    x, y = batch
    with small_model.fast_layout():
        ref = _reference_bim(small_model, x, y, 0.1, 0.02, 5, early_stop)
    r = BIM(eps=0.1, alpha=0.02, steps=5, early_stop=early_stop, fast_path="auto")(small_model,
                                                                                  x, y)
    assert torch.equal(r.x_adv, ref)
    if early_stop:  # examples stop being counted after their first success
        assert bool((r.queries <= 5).all()) and bool((r.queries[r.success] < 5).any())
    else:
        assert bool((r.queries == 5).all())


def test_step_loop_keeps_shapes_and_counts_steps():
    calls = []

    def step(a, b, c):
        calls.append(1)
        return a + c, b * 2

    a, b = fastpath.StepLoop(step).run((torch.zeros(3), torch.ones(3)), (torch.full((3,), 0.5),), 4)
    assert torch.equal(a, torch.full((3,), 2.0)) and torch.equal(b, torch.full((3,), 16.0))
    assert len(calls) == 4
    same = (torch.zeros(2),)
    assert fastpath.StepLoop(step).run(same, (torch.ones(2),), 0)[0] is same[0]


def test_bf16_autocast_changes_little_and_keeps_fp32(small_model, batch):
    x, y = batch
    fp32 = PGD(eps=0.3, steps=5)(small_model, x, y)
    bf16 = PGD(eps=0.3, steps=5, bf16=True)(small_model, x, y)
    assert bf16.x_adv.dtype == torch.float32
    assert float((bf16.x_adv - x).abs().max()) <= 0.3 + 1e-6
    # the sign step survives bf16 rounding almost everywhere
    agree = float((bf16.x_adv == fp32.x_adv).float().mean())
    assert agree > 0.8
    assert abs(bf16.success_rate - fp32.success_rate) <= 0.25


def test_legacy_fast_flag_still_warns_and_matches_eager_on_cpu(small_model, batch):
    if CUDA:
        pytest.skip("on CUDA fast=True captures")
    x, y = batch
    eager = PGD(steps=3)(small_model, x[:4], y[:4])
    with pytest.warns(UserWarning, match="fast=True"):
        fast = PGD(steps=3, fast=True)(small_model, x[:4], y[:4])
    assert torch.equal(eager.x_adv, fast.x_adv)


def test_auto_mode_with_l1_falls_back_to_eager(small_model, batch):
    x, y = batch
    a = PGD(norm="l1", steps=3, fast_path="auto")(small_model, x, y)
    b = PGD(norm="l1", steps=3)(small_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)


# --------------------------------------------------------------------------- CUDA only


@pytest.mark.skipif(not CUDA, reason="CUDA-graph replay needs a CUDA device")
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_cuda_graph_fp32_equals_eager(trained_model, batch, norm):
    model = trained_model("cnn-small", epochs=3).to("cuda")
    x, y = batch[0].cuda(), batch[1].cuda()
    eager = PGD(norm=norm, steps=10, batch_size=7)(model, x, y)
    graph = PGD(norm=norm, steps=10, batch_size=7, fast_path="cuda-graph")(model, x, y)
    assert torch.allclose(graph.x_adv, eager.x_adv, atol=1e-6)
    assert float((graph.x_adv == eager.x_adv).float().mean()) > 0.999
    b_e = BIM(eps=0.1, steps=8, early_stop=True)(model, x, y)
    b_g = BIM(eps=0.1, steps=8, early_stop=True, fast_path="cuda-graph")(model, x, y)
    assert torch.allclose(b_g.x_adv, b_e.x_adv, atol=1e-6)
    assert torch.equal(b_g.queries, b_e.queries)


# --------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("name,params", [("pgd", {"steps": 2}), ("bim", {"steps": 2}),
                                         ("cw-l2", {"binary_search_steps": 1, "max_iter": 3}),
                                         ("cw-l0", {"max_iter": 3, "max_rounds": 1, "initial_const": 1.0,
                                                     "largest_const": 1.0}),
                                         ("cw-linf", {"max_iter": 3, "initial_const": 1.0,
                                                       "largest_const": 1.0})])
def test_attacks_compute_input_gradients_only(trained_model, batch, name, params):
    """No weight gradients: they cost a second backward through every layer and would leave
    .grad on the victim's parameters."""
    model = trained_model("cnn-small", epochs=3)
    x, y = batch
    create(name, **params)(model, x[:4], y[:4])
    assert all(p.grad is None for p in model.parameters())
