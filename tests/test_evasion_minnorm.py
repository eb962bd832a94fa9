"""Minimum-norm white-box attacks: C&W (L2, Linf, L0), DeepFool (+ dynamic), JSMA."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import create, get
from bastion.attacks.base import MINIMUM_NORM
from bastion.attacks.evasion import (
    JSMA,
    PGD,
    CarliniWagnerL0,
    CarliniWagnerL2,
    CarliniWagnerLinf,
    DeepFool,
    DynamicDeepFool,
    select_targets,
)
from bastion.core import ConfigError, InputError
from bastion.data import load


@pytest.fixture(scope="module")
def batch(correct_batch):
    x, y = correct_batch
    return x[:12], y[:12]


@pytest.fixture(scope="module")
def digits_model(trained_model):
    return trained_model("mlp", data="digits", epochs=10)


@pytest.fixture(scope="module")
def digits_batch(digits_model):
    test = load("digits", "test")
    ok = digits_model.predict(test.x) == test.y
    idx = torch.nonzero(ok).flatten()[:8]
    return test.x[idx], test.y[idx]


@pytest.fixture(scope="module")
def cw_l2_result(small_model, batch):
    x, y = batch
    return CarliniWagnerL2.fast()(small_model, x, y)


@pytest.fixture(scope="module")
def deepfool_result(small_model, batch):
    x, y = batch
    return DeepFool()(small_model, x, y)


def test_registry_kinds():
    for name in ("cw-l2", "cw-linf", "cw-l0", "deepfool", "deepfool-dynamic", "jsma"):
        assert get(name).kind == MINIMUM_NORM
    assert get("cw") is CarliniWagnerL2
    assert create("deepfool", norm="linf").norm == "linf"


def test_cw_l2_succeeds_with_small_l2(small_model, batch, cw_l2_result, deepfool_result):
    r = cw_l2_result
    assert r.success.all()
    l2 = r.norms["l2"]
    assert float(l2.max()) < 4.0
    # C&W is the stronger minimiser: smaller mean L2 than DeepFool on the same inputs
    assert float(l2.mean()) < float(deepfool_result.norms["l2"].mean())
    assert r.queries is not None and bool((r.queries > 0).all())


def test_cw_l2_smaller_than_pgd_l2_at_equal_success(small_model, batch, cw_l2_result):
    x, y = batch
    eps = 2.0
    pgd = PGD(norm="l2", eps=eps, steps=20)(small_model, x, y)
    cw = cw_l2_result
    # at PGD's own budget C&W succeeds at least as often ...
    assert float(cw.success_at(eps, "l2").float().mean()) >= pgd.success_rate
    # ... and with a smaller perturbation where both succeed
    both = cw.success & pgd.success
    assert bool(both.any())
    assert float(cw.norms["l2"][both].mean()) < float(pgd.norms["l2"][both].mean())


def test_minimum_norm_results_are_not_clipped(deepfool_result, cw_l2_result):
    for r in (deepfool_result, cw_l2_result):
        l2 = r.norms["l2"]
        eps = float(l2.median())
        # some successes lie beyond the median budget: nothing was projected to it
        assert bool((r.success & (l2 > eps + 1e-3)).any())
        assert r.success_at(eps, "l2").float().mean() < r.success_rate


def test_cw_l2_targeted_reaches_target(small_model, batch):
    x, y = batch
    x, y = x[:6], y[:6]
    t = select_targets(small_model, x, y, "ll")
    r = CarliniWagnerL2.fast()(small_model, x, y, target=t)
    assert r.targeted
    assert bool((r.pred_adv == t).all())


def test_cw_kappa_gives_confident_examples(small_model, batch):
    x, y = batch
    x, y = x[:4], y[:4]
    r0 = CarliniWagnerL2.fast(binary_search_steps=3)(small_model, x, y)
    r5 = CarliniWagnerL2.fast(binary_search_steps=3, confidence=5.0)(small_model, x, y)
    z = small_model.logits(r5.x_adv)
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], -1e9).amax(1)
    assert bool(((other - true) >= 5.0 - 1e-3)[r5.success].all())
    assert float(r5.norms["l2"].mean()) > float(r0.norms["l2"].mean())


def test_cw_linf_succeeds_with_small_linf(small_model, batch, cw_l2_result):
    x, y = batch
    x, y = x[:6], y[:6]
    r = CarliniWagnerLinf.fast(largest_const=2.0, max_iter=60)(small_model, x, y)
    assert r.success.all()
    linf = r.norms["linf"]
    # the Linf attack spends its budget evenly: a smaller Linf than the L2 attack's
    assert float(linf.mean()) < float(cw_l2_result.norms["linf"][:6].mean())
    assert float(linf.max()) < 0.4


def test_cw_linf_targeted_reaches_target(small_model, batch):
    x, y = batch
    x, y = x[:3], y[:3]
    t = select_targets(small_model, x, y, "most")
    # min_tau 0.05 stops the tau-shrinking rounds early: this checks the target, not the norm
    r = CarliniWagnerLinf.fast(largest_const=2.0, max_iter=50, min_tau=0.05)(
        small_model, x, y, target=t)
    assert r.targeted and bool((r.pred_adv == t).all())
    assert float(r.norms["linf"].max()) < 0.5


def test_cw_l0_targeted_reaches_target(digits_model, digits_batch):
    x, y = digits_batch
    x, y = x[:3], y[:3]
    t = select_targets(digits_model, x, y, "ll")
    r = CarliniWagnerL0.fast()(digits_model, x, y, target=t)
    assert bool((r.pred_adv == t).all())
    # sparse: well under half of the 64 features change
    assert float(r.norms["l0"].max()) < 32


def test_dynamic_deepfool_targeted(small_model, batch):
    x, y = batch
    t = select_targets(small_model, x, y, "next")
    r = DynamicDeepFool()(small_model, x, y, target=t)
    assert float((r.pred_adv == t).float().mean()) >= 0.9


def test_cw_l0_and_jsma_change_few_pixels(digits_model, digits_batch):
    x, y = digits_batch
    l0 = CarliniWagnerL0.fast()(digits_model, x, y)
    l2 = CarliniWagnerL2.fast()(digits_model, x, y)
    assert l0.success.all() and l2.success.all()
    assert float(l0.norms["l0"].mean()) < 0.5 * float(l2.norms["l0"].mean())
    t = select_targets(digits_model, x, y, "most")
    js = JSMA(gamma=0.3)(digits_model, x, y, target=t)
    assert float(js.success_rate) >= 0.75
    assert bool((js.pred_adv[js.success] == t[js.success]).all())
    assert float(js.norms["l0"].max()) <= 0.3 * 64 + 1
    assert float(js.norms["l0"].mean()) < float(l2.norms["l0"].mean())


def test_jsma_on_mnist_targets(small_model, batch):
    x, y = batch
    x, y = x[:4], y[:4]
    t = select_targets(small_model, x, y, "most")
    r = JSMA()(small_model, x, y, target=t)
    assert float(r.success_rate) >= 0.75
    assert float(r.norms["l0"].max()) <= 0.1 * 784 + 2
    # JSMA with theta = +1 only raises pixels (to the top of the range)
    assert bool((r.x_adv >= r.x - 1e-6).all())


def test_deepfool_l2_and_linf(small_model, batch, deepfool_result):
    x, y = batch
    r = deepfool_result
    assert r.success.all()
    assert float(r.norms["l2"].mean()) < 3.5
    its = r.extras["iterations"]
    assert float(its.max()) <= 50 and float(its.min()) >= 1
    ri = DeepFool(norm="linf")(small_model, x, y)
    assert ri.success.all()
    # the Linf variant finds smaller Linf, the L2 variant smaller L2
    assert float(ri.norms["linf"].mean()) < float(r.norms["linf"].mean())
    assert float(r.norms["l2"].mean()) < float(ri.norms["l2"].mean())


def test_deepfool_targeted(small_model, batch):
    x, y = batch
    t = select_targets(small_model, x, y, "most")
    r = DeepFool()(small_model, x, y, target=t)
    assert float((r.pred_adv == t).float().mean()) >= 0.9


def test_dynamic_deepfool_needs_fewer_iterations(small_model, batch, deepfool_result):
    x, y = batch
    r = DynamicDeepFool()(small_model, x, y)
    assert r.success.all()
    assert float(r.extras["iterations"].mean()) < float(deepfool_result.extras["iterations"].mean())


def test_bad_inputs(small_model, batch):
    x, y = batch
    with pytest.raises(ConfigError):
        DeepFool(norm="l1")(small_model, x, y)
    with pytest.raises(ConfigError):
        create("cw-l2", confidence=-1.0)
    with pytest.raises(ConfigError):
        create("cw-l2", lr=0.0)
    with pytest.raises(ConfigError):
        create("cw-linf", decrease_factor=1.5)
    with pytest.raises(ConfigError):
        create("jsma", gamma=0.0)
    with pytest.raises(ConfigError):
        create("deepfool", max_iter=-3)
    with pytest.raises(ConfigError):
        create("cw-l2", not_a_param=1)
    with pytest.raises(InputError):
        CarliniWagnerL2.fast()(small_model, x * 2 + 1, y)
    with pytest.raises(InputError):
        DeepFool()(small_model, x, y, target=torch.full_like(y, 10))
    with pytest.raises(InputError):
        DeepFool()(small_model, x, y, target=y)
