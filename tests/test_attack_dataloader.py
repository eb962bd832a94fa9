"""Attacks take a DataLoader of (x, y) batches as well as tensors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bastion.attacks.evasion import FGSM, PGD
from bastion.core import InputError


def test_loader_call_equals_tensor_call(small_model, correct_batch) -> None:
    x, y = correct_batch
    attack = PGD(eps=0.3, steps=10, alpha=0.03, seed=3)     # random start, seeded
    on_tensors = attack(small_model, x, y)
    loader = DataLoader(TensorDataset(x, y), batch_size=24)   # 24 + 24 + 16
    on_loader = attack(small_model, loader)
    assert on_loader.n == on_tensors.n == len(y)
    assert torch.equal(on_loader.x_adv, on_tensors.x_adv)
    assert torch.equal(on_loader.success, on_tensors.success)
    assert torch.equal(on_loader.y, on_tensors.y)
    assert on_loader.success_rate >= 0.9                     # the attack really ran
    # a plain iterable of pairs works as well
    pairs = [(x[:10], y[:10]), (x[10:], y[10:])]
    assert torch.equal(FGSM(eps=0.2)(small_model, pairs).x_adv, FGSM(eps=0.2)(small_model, x, y).x_adv)


def test_loader_with_wrong_shapes_is_refused_in_one_line(small_model, correct_batch) -> None:
    x, y = correct_batch
    flat = DataLoader(TensorDataset(x.flatten(1), y), batch_size=16)
    with pytest.raises(InputError, match=r"batch 0: expected x of shape \[B, 1, 28, 28\]") as e:
        FGSM(eps=0.1)(small_model, flat)
    assert "\n" not in str(e.value)
    bad_y = [(x[:8], y[:8]), (x[8:16], y[8:16, None])]
    with pytest.raises(InputError, match=r"batch 1: .*y of shape \[B\], got x \[8, 1, 28, 28\] and y \[8, 1\]"):
        FGSM(eps=0.1)(small_model, bad_y)
    with pytest.raises(InputError, match="pair"):
        FGSM(eps=0.1)(small_model, [x[:8]])
    with pytest.raises(InputError, match="no batches"):
        FGSM(eps=0.1)(small_model, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4))
    with pytest.raises(InputError, match="labels come from"):
        FGSM(eps=0.1)(small_model, flat, y)
    with pytest.raises(InputError, match="labels y are required"):
        FGSM(eps=0.1)(small_model, x)
