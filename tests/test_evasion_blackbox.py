"""Black-box and universal attacks: Square, HopSkipJump, one-pixel, universal perturbation."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import create, get
from bastion.attacks.evasion import HopSkipJump, OnePixel, Square, Universal, select_targets
from bastion.core import ConfigError, InputError, InputSpec
from bastion.data import load
from bastion.models import build_classifier


@pytest.fixture(scope="module")
def batch(correct_batch):
    x, y = correct_batch
    return x[:16], y[:16]


def test_registry():
    assert get("square") is Square
    assert get("hsj") is HopSkipJump
    for name in ("square", "hopskipjump", "one-pixel"):
        assert get(name).black_box


def test_square_linf_succeeds_within_budget(small_model, batch):
    x, y = batch
    r = Square(eps=0.3, max_queries=300)(small_model, x, y)
    assert float(r.success_rate) >= 0.9
    assert float(r.norms["linf"].max()) <= 0.3 + 1e-6
    q = r.queries
    assert q is not None and bool((q >= 1).all()) and bool((q <= 300).all())
    # examples stop querying once fooled: successes use fewer queries than the budget
    assert float(q[r.success].min()) < 300
    # a smaller budget is harder
    r_small = Square(eps=0.1, max_queries=300)(small_model, x, y)
    assert r_small.success_rate < r.success_rate


def test_square_l2_and_targeted(small_model, batch):
    x, y = batch
    r = Square(norm="l2", eps=3.0, max_queries=300)(small_model, x, y)
    assert float(r.norms["l2"].max()) <= 3.0 + 1e-4
    assert float(r.success_rate) >= 0.5
    t = select_targets(small_model, x, y, "most")
    rt = Square(eps=0.3, max_queries=300)(small_model, x, y, target=t)
    assert rt.targeted
    assert float((rt.pred_adv == t).float().mean()) >= 0.75


def test_square_margin_is_monotone(small_model, batch):
    """Random search only accepts improvements: more queries never hurt."""
    x, y = batch
    a = Square(eps=0.15, max_queries=20, seed=3)(small_model, x, y)
    b = Square(eps=0.15, max_queries=200, seed=3)(small_model, x, y)
    def margin(xa):
        z = small_model.logits(xa)
        return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], -1e9).amax(1)
    assert bool((margin(b.x_adv) <= margin(a.x_adv) + 1e-5).all())


def test_hopskipjump_l2_shrinks_distance(small_model, batch):
    x, y = batch
    x, y = x[:8], y[:8]
    r0 = HopSkipJump(max_iter=0)(small_model, x, y)
    r = HopSkipJump(max_iter=6, init_evals=50)(small_model, x, y)
    assert r.success.all() and r0.success.all()
    # the iterations walk along the boundary towards x
    assert float(r.norms["l2"].median()) < 0.6 * float(r0.norms["l2"].median())
    assert bool((r.queries > r0.queries).all())


def test_hopskipjump_query_budget_and_linf(small_model, batch):
    x, y = batch
    x, y = x[:8], y[:8]
    r = HopSkipJump(max_iter=40, init_evals=50, max_queries=600)(small_model, x, y)
    assert r.success.all()
    # the budget stops an example before a gradient estimate would exceed it; the
    # searches of the last iteration add at most a few dozen queries
    assert float(r.queries.max()) <= 600 + 80
    ri = HopSkipJump(norm="linf", max_iter=4, init_evals=50)(small_model, x, y)
    r0 = HopSkipJump(norm="linf", max_iter=0)(small_model, x, y)
    assert ri.success.all()
    assert float(ri.norms["linf"].median()) < float(r0.norms["linf"].median())


def test_hopskipjump_targeted(small_model, batch):
    x, y = batch
    t = y.roll(1)
    keep = t != y
    x, y, t = x[keep], y[keep], t[keep]
    r = HopSkipJump(max_iter=3, init_evals=30)(small_model, x, y, target=t)
    # every target is the class of another input of the batch, which serves as the start
    assert bool((r.pred_adv == t).all())
    r0 = HopSkipJump(max_iter=0)(small_model, x, y, target=t)
    assert float(r.norms["l2"].median()) < float(r0.norms["l2"].median())


def test_one_pixel_evolution_lowers_confidence(small_model, batch):
    x, y = batch
    r0 = OnePixel(pixels=3, population=60, max_iter=0, seed=1)(small_model, x, y)
    r = OnePixel(pixels=3, population=60, max_iter=15, seed=1)(small_model, x, y)
    assert float(r.norms["l0"].max()) <= 3
    p0 = small_model.probs(r0.x_adv).gather(1, y[:, None]).mean()
    p = small_model.probs(r.x_adv).gather(1, y[:, None]).mean()
    assert float(p) < float(p0) - 0.02
    assert bool((r.queries >= r0.queries).all()) and float(r0.queries[0]) == 60


def test_one_pixel_fools_the_digits_model(trained_model):
    model = trained_model("mlp", data="digits", epochs=10)
    test = load("digits", "test")
    idx = torch.nonzero(model.predict(test.x) == test.y).flatten()[:32]
    x, y = test.x[idx], test.y[idx]
    r0 = OnePixel(pixels=3, population=100, max_iter=0)(model, x, y)
    r = OnePixel(pixels=3, population=100, max_iter=10)(model, x, y)
    assert float(r.success_rate) >= 0.4
    assert r.success_rate > r0.success_rate + 0.1
    assert float(r.norms["l0"].max()) <= 3
    t = (y + 1) % 10
    rt = OnePixel(pixels=3, population=100, max_iter=10)(model, x, y, target=t)
    assert bool((rt.pred_adv[rt.success] == t[rt.success]).all())
    assert rt.success_rate > 0


def test_universal_perturbation(small_model, correct_batch):
    x, y = correct_batch
    x, y = x[:32], y[:32]
    r = Universal(eps=0.3, max_iter=5)(small_model, x, y)
    v = r.extras["perturbation"]
    assert v.shape == x.shape[1:]
    assert float(v.abs().max()) <= 0.3 + 1e-6
    # one perturbation for every input (up to clipping at the bounds)
    assert torch.allclose(r.x_adv, (r.x + v).clamp(0, 1))
    assert r.extras["fooling_rate"] >= 0.3
    # and it beats random noise of the same size
    noise = (torch.randint(0, 2, x.shape[1:]).float() * 2 - 1) * 0.3
    rand_fool = (small_model.predict((x + noise).clamp(0, 1)) != y).float().mean()
    assert r.extras["fooling_rate"] > float(rand_fool) + 0.1
    rl2 = Universal(norm="l2", eps=4.0, max_iter=3)(small_model, x, y)
    assert float(rl2.extras["perturbation"].norm()) <= 4.0 + 1e-4


def test_bad_inputs(small_model, batch):
    x, y = batch
    with pytest.raises(ConfigError):
        Square(norm="l1")(small_model, x, y)
    with pytest.raises(ConfigError):
        create("square", eps=-0.1)
    with pytest.raises(ConfigError):
        create("square", p_init=1.5)
    with pytest.raises(ConfigError):
        create("hopskipjump", init_evals=100, max_evals=10)
    with pytest.raises(ConfigError):
        create("hopskipjump", norm="l0")
    with pytest.raises(ConfigError):
        create("one-pixel", population=2)
    with pytest.raises(ConfigError):
        create("universal", delta=1.0)
    with pytest.raises(ConfigError):
        Universal()(small_model, x, y, target=(y + 1) % 10)
    with pytest.raises(InputError):
        Square()(small_model, x - 0.5, y)
    flat = torch.rand(4, 64)
    mlp = build_classifier("mlp", InputSpec((64,)), 10, {}, device="cpu")
    with pytest.raises(InputError):
        OnePixel()(mlp, flat, torch.zeros(4, dtype=torch.long))
