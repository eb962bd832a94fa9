"""The attack contract on the end-to-end slice: FGSM and PGD-Linf on a trained model."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import create, names
from bastion.attacks.evasion import FGSM, PGD, select_targets
from bastion.core import Classifier, ConfigError, InputError, InputSpec


def test_fgsm_and_pgd_succeed_and_respect_the_budget(small_model, correct_batch) -> None:
    x, y = correct_batch
    fgsm = FGSM(eps=0.3)(small_model, x, y)
    pgd = PGD(eps=0.3, steps=20, alpha=0.03)(small_model, x, y)
    for r in (fgsm, pgd):
        assert float(r.norms["linf"].max()) <= 0.3 + 1e-5
        assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
        assert torch.equal(r.success, r.pred_adv != r.y)
    assert pgd.success_rate >= 0.95
    assert pgd.success_rate >= fgsm.success_rate  # iterative beats single step
    assert FGSM(eps=0.0)(small_model, x, y).success_rate == 0.0
    s = pgd.summary()
    assert s["n"] == 64 and s["robust_accuracy"] == pytest.approx(1 - pgd.success_rate)
    assert s["wall_time_s"] > 0 and s["queries_mean"] == 20


def test_targeted_pgd_reaches_the_target(small_model, correct_batch) -> None:
    x, y = correct_batch
    for mode in ("most", "next", "ll", "random"):
        t = select_targets(small_model, x, y, mode)
        assert bool((t != y.to(t.device)).all())
    t = select_targets(small_model, x, y, "next")
    r = PGD(eps=0.3, steps=40, alpha=0.02)(small_model, x, y, t)
    assert r.targeted and r.success_rate >= 0.85
    assert torch.equal(r.success, r.pred_adv == t)


def test_pgd_restarts_keep_the_best(small_model, correct_batch) -> None:
    x, y = correct_batch
    one = PGD(eps=0.1, steps=5, restarts=1, seed=0)(small_model, x, y)
    three = PGD(eps=0.1, steps=5, restarts=3, seed=0)(small_model, x, y)
    assert three.success_rate >= one.success_rate


def test_attack_bad_inputs(small_model, correct_batch) -> None:
    x, y = correct_batch
    with pytest.raises(ConfigError, match="non-negative"):
        PGD(eps=-0.1)(small_model, x, y)
    with pytest.raises(InputError, match="bounds"):
        FGSM()(small_model, x * 2 - 1, y)
    with pytest.raises(InputError, match="labels outside"):
        FGSM()(small_model, x, y + 10)
    with pytest.raises(InputError, match="differ"):
        FGSM()(small_model, x, y, y)
    probs = Classifier(torch.nn.Sequential(small_model.module, torch.nn.Softmax(-1)),
                       InputSpec((1, 28, 28)), 10, device="cpu")
    with pytest.raises(InputError, match="probabilities"):
        FGSM()(probs, x, y)
    # budgets larger than the whole input domain (eps on the 0-255 scale) fail before work
    for name, params in (("fgsm", {"eps": 8.0}), ("square", {"eps": 8.0}),
                         ("square", {"norm": "l2", "eps": 100.0}), ("universal", {"eps": 8.0}),
                         ("bim", {"eps": 8.0}), ("mifgsm", {"eps": 8.0})):
        with pytest.raises(ConfigError, match="exceeds"):
            create(name, **params)(small_model, x, y)
    for name in ("fgsm", "square", "universal", "hopskipjump"):
        with pytest.raises(ConfigError):
            create(name, eps=-1.0) if name != "hopskipjump" else create(name, max_iter=-1)
    with pytest.raises(ConfigError, match="valid attacks"):
        create("pgdd")
    with pytest.raises(ConfigError, match="unknown parameter"):
        create("pgd", epsilon=0.3)
    assert {"fgsm", "pgd"} <= set(names())


def test_fast_layout_is_channels_last_on_cpu_and_restored(small_model, correct_batch) -> None:
    x, _ = correct_batch
    conv = next(m for m in small_model.module.modules() if isinstance(m, torch.nn.Conv2d))
    ref = small_model.logits(x)
    with small_model.fast_layout():
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        with small_model.fast_layout():  # re-entrant: the inner exit must not undo the outer
            pass
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        fast = small_model.logits(x)
    assert conv.weight.is_contiguous()
    assert torch.allclose(fast, ref, atol=1e-5)


def test_attacks_return_contiguous_default_layout_inputs(small_model, correct_batch) -> None:
    x, y = correct_batch
    r = PGD(eps=0.1, alpha=0.02, steps=2)(small_model, x, y)
    assert r.x_adv.is_contiguous()
    assert next(small_model.module.parameters()).is_contiguous()
