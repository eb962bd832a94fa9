"""The worst-case ensemble's work-saving mechanics: APGD rows that leave the batch at their
first success, APGD-T's target classes batched as examples x targets, and Square's
gathered still-robust set, window tables and one-draw redraw of unchanged proposals
(Croce & Hein, 2020; Andriushchenko et al., 2020)."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import create
from bastion.attacks.evasion.apgd import APGD, APGDT
from bastion.attacks.evasion.square import Square, _window, _Windows

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20


@pytest.fixture(scope="module")
def batch(correct_batch):
    x, y = correct_batch
    return x[:24], y[:24]


def test_apgd_rows_stop_at_their_first_success(small_model, batch):
    x, y = batch
    r = APGD(eps=0.2, steps=STEPS)(small_model, x, y)
    q = r.queries
    assert 0.5 <= float(r.success.float().mean()) < 1.0  # some break, some resist
    # one clean prediction plus the gradient evaluations each row took
    full = 1 + STEPS + 1
    assert bool((q[~r.success] == full).all())
    assert float(q[r.success].max()) < full and float(q[r.success].min()) >= 2
    assert float((r.x_adv - r.x).abs().amax()) <= 0.2 + 1e-6


def test_grouped_rows_stop_together(small_model, batch):
    """Rows of one group (an example's target classes) all leave at the iteration one of
    them misclassifies the example; the successful row's input is misclassified."""
    x, y = batch
    with torch.no_grad():
        targets = small_model(x).argsort(1, descending=True)[:, 1:4]
    rows_x, rows_y = x.repeat_interleave(3, 0), y.repeat_interleave(3)
    group = torch.arange(x.shape[0]).repeat_interleave(3)
    atk = APGDT(eps=0.2, steps=STEPS)
    gen = torch.Generator().manual_seed(0)
    xa, ok, q = atk.attack_single_run(small_model, rows_x, rows_y, targets.flatten(), gen,
                                      group=group, untargeted_success=True)
    ok, q = ok.view(-1, 3), q.view(-1, 3)
    broken = ok.any(1)
    assert 0 < int(broken.sum()) < x.shape[0]
    assert bool((q == q[:, :1]).all())  # every row of a group ran as long as the others
    assert bool((q[~broken] == STEPS + 1).all()) and bool((q[broken] < STEPS + 1).all())
    pred = small_model.predict(xa).view(-1, 3)
    assert bool((pred[ok] != y.repeat_interleave(3).view(-1, 3)[ok]).all())


def test_apgd_t_batched_targets(small_model, batch):
    x, y = batch
    n_t = 3
    r = create("apgd-t", eps=0.15, steps=STEPS, n_target_classes=n_t)(small_model, x, y)
    assert 0.0 < float(r.success.float().mean()) < 1.0
    assert float((r.x_adv - r.x).abs().amax()) <= 0.15 + 1e-6
    full = 1 + n_t * (STEPS + 1)
    assert bool((r.queries[~r.success] == full).all())
    assert bool((r.queries[r.success] < full).all())
    # batching the target classes over rows of at most batch_size changes nothing
    r_small = create("apgd-t", eps=0.15, steps=STEPS, n_target_classes=n_t,
                     batch_size=7)(small_model, x, y)
    assert abs(float(r_small.success.float().mean()) - float(r.success.float().mean())) <= 0.1
    # more target classes break at least as many points, up to the random starts
    r1 = create("apgd-t", eps=0.15, steps=STEPS, n_target_classes=1)(small_model, x, y)
    assert int(r.success.sum()) >= int(r1.success.sum()) - 1


def test_autoattack_stages_only_see_robust_points(small_model, batch):
    x, y = batch
    r = create("autoattack", eps=0.15, steps=STEPS, n_target_classes=3, square_queries=100)(
        small_model, x, y)
    after = r.extras["robust_after"]
    vals = [after[k] for k in ("clean", "apgd-ce", "apgd-t", "square")]
    assert vals == sorted(vals, reverse=True) and vals[-1] == pytest.approx(r.robust_accuracy)
    stage = r.extras["stage"]
    assert bool((stage[r.success] >= 0).all()) and bool((stage[~r.success] == -1).all())


def test_square_window_tables_match_masks():
    gen = torch.Generator().manual_seed(1)
    h, w = 28, 20
    tables = _Windows(h, w, torch.device("cpu"))
    for s in (1, 3, 7, 19):
        top = torch.randint(0, h - s + 1, (50,), generator=gen)
        left = torch.randint(0, w - s + 1, (50,), generator=gen)
        assert torch.equal(tables(s, top, left), _window(50, h, w, s, top, left))


def test_square_redraw_is_uniform_over_the_other_patterns():
    """Redrawing a sign pattern that leaves the window unchanged until it changes is a
    uniform draw among the other 2^c - 1 patterns: one flip of a non-empty channel set."""
    gen = torch.Generator().manual_seed(0)
    f = Square()._flip(14000, 3, gen, torch.device("cpu")).view(-1, 3)
    assert not bool((f == 1).all(1).any())  # the unchanged pattern is never drawn again
    codes = ((f < 0).long() * torch.tensor([1, 2, 4])).sum(1)
    freq = torch.bincount(codes, minlength=8)[1:].float() / codes.numel()
    assert torch.allclose(freq, torch.full((7,), 1 / 7), atol=0.02)
    assert bool((Square()._flip(100, 1, gen, torch.device("cpu")) == -1).all())


def test_square_stops_querying_fooled_examples(small_model, batch):
    x, y = batch
    r = Square(eps=0.2, max_queries=200)(small_model, x, y)
    q = r.queries
    assert 0.0 < float(r.success.float().mean()) < 1.0
    assert bool((q[~r.success] == 200).all())
    assert bool((q[r.success] < 200).all())
    assert float((r.x_adv - r.x).abs().amax()) <= 0.2 + 1e-6
