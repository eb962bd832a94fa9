"""Evasion metrics (dissertation ch. 2) and the difference-of-proportions CI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bastion.core import AttackResult, Classifier, ConfigError, InputSpec
from bastion.metrics.evasion import (
    evasion_metrics,
    per_class_success,
    source_target_matrix,
    target_success_matrix,
)
from bastion.metrics.stats import compare_success, diff_proportions


class _LogOf(nn.Module):
    """Inputs are probability vectors; logits = log(p), so softmax(logits) = p."""

    def forward(self, x):
        return torch.log(x.clamp_min(1e-12))


def _prob_model() -> Classifier:
    return Classifier(_LogOf(), InputSpec((3,)), 3, device="cpu")


def _result(model, x, x_adv, y, target=None, wall=2.0):
    pred_adv = model.predict(x_adv)
    success = pred_adv == target if target is not None else pred_adv != y
    return AttackResult(x=x, x_adv=x_adv, y=y, success=success, pred_clean=model.predict(x),
                        pred_adv=pred_adv, target=target, queries=torch.tensor([10.0, 20.0, 30.0]),
                        wall_time=wall, attack="hand")


def test_confidence_metrics_match_hand_computation():
    m = _prob_model()
    x = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2]])
    x_adv = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])
    y = torch.tensor([0, 0, 1])
    r = _result(m, x, x_adv, y)
    out = evasion_metrics(m, r)
    # successes: example 0 (-> class 1) and example 2 (-> class 2)
    assert out["asr"] == pytest.approx(2 / 3) and out["mr"] == pytest.approx(2 / 3)
    assert out["mean_conf"] == pytest.approx((0.7 + 0.6) / 2)
    assert out["dist_aatb"] == pytest.approx((abs(0.7 - 0.9) + abs(0.6 - 0.7)) / 2)
    assert out["dist_aata"] == pytest.approx((abs(0.7 - 0.2) + abs(0.6 - 0.3)) / 2)
    assert out["dist_acoc"] == pytest.approx(((0.7 - 0.2) + (0.6 - 0.3)) / 2)
    d0, d2 = x_adv[0] - x[0], x_adv[2] - x[2]
    assert out["l2_abs"] == pytest.approx(float((d0.norm() + d2.norm()) / 2), rel=1e-5)
    assert out["linf_rel"] == pytest.approx(float((d0.abs().max() / 0.9 + d2.abs().max() / 0.7) / 2),
                                            rel=1e-5)
    assert out["l1_abs"] == pytest.approx(float((d0.abs().sum() + d2.abs().sum()) / 2), rel=1e-5)
    assert out["l0_abs"] == pytest.approx(2.5)  # 3 and 2 changed values
    assert out["ssim"] is None and out["psnr"] is None  # not images
    assert out["time_per_example_s"] == pytest.approx(2 / 3)
    assert out["queries_mean"] == pytest.approx(20.0)


def test_targeted_asr_differs_from_misclassification_rate():
    m = _prob_model()
    x = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2]])
    x_adv = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1]])
    y = torch.tensor([0, 0, 1])
    t = torch.tensor([1, 1, 0])
    out = evasion_metrics(m, _result(m, x, x_adv, y, t))
    assert out["asr"] == pytest.approx(1 / 3)   # only example 0 reaches its target
    assert out["mr"] == pytest.approx(2 / 3)    # examples 0 and 1 are misclassified
    assert out["mean_conf"] == pytest.approx(0.7)


def test_no_success_gives_none_not_nan():
    m = _prob_model()
    x = torch.tensor([[0.9, 0.05, 0.05]] * 3)
    out = evasion_metrics(m, _result(m, x, x.clone(), torch.zeros(3, dtype=torch.long)))
    assert out["asr"] == 0.0
    assert out["mean_conf"] is None and out["l2_abs"] is None


def test_image_metrics_psnr_and_ssim():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[1, 5] = 100.0  # class 1 iff pixel 5 is bright
        net[1].bias[:] = torch.tensor([10.0, 0.0])
    m = Classifier(net, InputSpec((1, 4, 4)), 2, device="cpu")
    x = torch.zeros(2, 1, 4, 4)
    x_adv = x.clone()
    x_adv.view(2, -1)[:, 5] = 0.5
    r = _result(m, x, x_adv, torch.zeros(2, dtype=torch.long))
    r.queries = None
    out = evasion_metrics(m, r)
    assert out["asr"] == 1.0
    assert out["psnr"] == pytest.approx(10 * math.log10(1 / (0.25 / 16)), rel=1e-4)
    assert 0 < out["ssim"] < 1
    assert out["queries_mean"] is None


def test_per_class_and_matrices():
    m = _prob_model()
    x = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2]])
    x_adv = torch.tensor([[0.2, 0.7, 0.1], [0.8, 0.1, 0.1], [0.1, 0.3, 0.6]])
    y = torch.tensor([0, 0, 1])
    r = _result(m, x, x_adv, y)
    assert per_class_success(r, 3) == [0.5, 1.0, None]
    mat = source_target_matrix(r, 3)
    assert mat.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert int(source_target_matrix(r, 3, successful_only=False).sum()) == 3
    t = torch.tensor([1, 2, 2])
    rt = _result(m, x, x_adv, y, t)
    tm = target_success_matrix(rt, 3)
    assert tm[0, 1] == 1.0 and tm[0, 2] == 0.0 and tm[1, 2] == 1.0 and math.isnan(float(tm[2, 0]))
    with pytest.raises(ValueError):
        target_success_matrix(r, 3)


def test_difference_of_proportions_reproduces_class_project_example():
    # FGSM vs I-FGSM adversarial accuracy on 10000 MNIST images (class project)
    d = diff_proportions(0.299, 10000, 0.2881)
    assert d.diff == pytest.approx(0.0109)
    assert d.variance == pytest.approx(0.000041469739, rel=1e-8)
    assert d.low == pytest.approx(-0.001721812443, abs=1e-9)
    assert d.high == pytest.approx(0.02352181244, abs=1e-9)
    assert not d.differ
    assert diff_proportions(0.9, 500, 0.5).differ
    assert diff_proportions(0.2, 500, 0.6).to_dict()["differ"] is True


def test_compare_success_and_bad_values():
    a = torch.tensor([True] * 90 + [False] * 10)
    b = torch.tensor([True] * 40 + [False] * 60)
    d = compare_success(a, b)
    assert d.p1 == pytest.approx(0.9) and d.p2 == pytest.approx(0.4) and d.differ
    with pytest.raises(ConfigError):
        diff_proportions(1.2, 10, 0.5)
    with pytest.raises(ConfigError):
        diff_proportions(0.2, 0, 0.5)


def test_asr_counts_only_initially_correct_inputs():
    """An input misclassified before the attack is clean error, not attack success."""
    m = _prob_model()
    x = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
    x_adv = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
    y = torch.tensor([0, 0, 1, 0])  # the last one is wrong before any attack
    r = _result(m, x, x_adv, y)
    r.queries = None
    out = evasion_metrics(m, r)
    assert out["asr"] == pytest.approx(1 / 3)  # example 0 fooled, of the 3 initially correct
    assert out["clean_error"] == pytest.approx(1 / 4)
    assert out["mr"] == pytest.approx(2 / 4)  # examples 0 and 3 are wrong after the attack
