"""Every attack's success flags come from the model's own forward pass, in its default
memory layout, on the examples the attack returns (not from the attack's internal logits,
which run channels-last on CPU and differ from the default layout by float rounding)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bastion.attacks import create, registry
from bastion.attacks.base import default_layout
from bastion.core import Classifier

# Small budgets so each attack runs in well under a second on 6 examples.
FAST: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 10}, "apgd-t": {"steps": 5, "n_target_classes": 2},
    "autoattack": {"steps": 5, "n_target_classes": 2, "square_queries": 50},
    "bim": {"steps": 5}, "fgsm": {}, "cw-l0": {"max_iter": 20, "max_rounds": 2},
    "cw-l2": {"binary_search_steps": 2, "max_iter": 30},
    "cw-linf": {"max_iter": 20, "largest_const": 0.01},
    "deepfool": {"max_iter": 20}, "deepfool-dynamic": {"max_iter": 20},
    "hopskipjump": {"max_iter": 2, "max_evals": 50, "init_evals": 20},
    "jsma": {"gamma": 0.05}, "mifgsm": {"steps": 5},
    "one-pixel": {"population": 20, "max_iter": 3}, "pgd": {"steps": 5},
    "square": {"max_queries": 50}, "universal": {"max_iter": 1, "df_max_iter": 3},
}


def _own_success(model: Classifier, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    assert not getattr(model, "_channels_last", False)
    assert all(p.is_contiguous() for p in model.module.parameters())
    return model.predict(x_adv.contiguous()) != y


def test_every_registered_attack_has_parameters_here():
    assert set(registry.names()) == set(FAST)


@pytest.mark.parametrize("name", sorted(FAST))
def test_success_is_the_models_own_forward_pass(name, small_model, correct_batch):
    x, y = correct_batch[0][:6], correct_batch[1][:6]
    result = create(name, **FAST[name])(small_model, x, y)
    own = _own_success(small_model, result.x_adv, y)
    assert torch.equal(result.success.cpu(), own.cpu())
    assert torch.equal(result.pred_adv.cpu(), small_model.predict(result.x_adv).cpu())


def test_deepfool_on_the_boundary_judged_in_default_layout(small_model, mnist_test):
    """DeepFool with a tiny overshoot leaves examples within ~1e-6 of the boundary, where
    the channels-last logits the attack iterates in flip labels the default layout does
    not (test example 407 of mnist-5k: counted adversarial before, classified correctly by
    the model itself)."""
    assert small_model.prefers_channels_last
    x, y = mnist_test.x[384:448], mnist_test.y[384:448]
    result = create("deepfool", overshoot=1e-6)(small_model, x, y)
    with torch.no_grad():
        top = small_model(result.x_adv).topk(2, 1).values
    assert int(((top[:, 0] - top[:, 1]) < 1e-5).sum()) >= 1   # examples really sit on it
    assert torch.equal(result.success, _own_success(small_model, result.x_adv, y))


def test_success_judged_in_default_layout_inside_an_outer_fast_layout(small_model, mnist_test):
    """An attack called inside an enclosing fast_layout (as an ensemble does) still
    judges success in the default layout, and the outer layout is restored."""
    x, y = mnist_test.x[384:448], mnist_test.y[384:448]
    with small_model.fast_layout():
        result = create("deepfool", overshoot=1e-6)(small_model, x, y)
        assert small_model._channels_last
        with default_layout(small_model):
            assert not small_model._channels_last
        assert small_model._channels_last
    assert torch.equal(result.success, _own_success(small_model, result.x_adv, y))


def test_boundary_point_on_the_wrong_side_is_pushed_across_by_at_most_a_tenth_percent():
    """A minimum-norm attack's boundary point that the model's own forward pass still
    classifies correctly is moved just across (perturbation grown <= 0.1%), and a point the
    attack never moved is left alone."""
    from torch import nn

    from bastion.attacks.base import _push_across_boundary
    from bastion.core import Classifier, InputSpec

    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    model = Classifier(lin, InputSpec((4,), bounds=(-10.0, 10.0)), 2, device="cpu")
    # class 1 wins once x0 > 0; the attack stopped a hair short of it
    x = torch.tensor([[-1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    x_adv = torch.tensor([[-1e-7, 0, 0, 0], [-1.0, 0, 0, 0]])
    y = torch.tensor([0, 0])
    pred = model.predict(x_adv)
    assert pred.tolist() == [0, 0]
    pushed = _push_across_boundary(model, x, x_adv, y, None, pred, (-10.0, 10.0))
    assert pushed == 1 and pred.tolist() == [1, 0]
    assert model.predict(x_adv).tolist() == [1, 0]
    growth = (x_adv[0] - x[0]).norm() / torch.tensor(1.0 - 1e-7)
    assert 1.0 < float(growth) <= 1.001
