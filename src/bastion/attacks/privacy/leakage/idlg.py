"""Improved DLG (iDLG; Zhao, Mopuri and Bilen, 2020).

For cross-entropy with softmax, the gradient of the output layer's bias (or of each weight
row, summed over the non-negative features) is p_c - 1 for the true class and p_c >= 0 for
every other class, so the label is the index of the only negative entry. iDLG reads the
label off analytically and then runs DLG with the label fixed:

    y   = argmin_c grad(output layer)_c
    x'  <- N(0, 1);  repeat T (300) L-BFGS steps on || d CE(f(x'), y) / dw - g ||^2

Batches use the multi-label extension in `infer_labels` (classes with negative entries,
spread in proportion to their magnitude).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bastion.attacks.privacy.leakage.common import (
    LeakageConfig,
    LeakageResult,
    Scorer,
    attack_weights,
    dummy_gradients,
    finish,
    infer_labels,
    init_dummies,
    l2_distance,
    prepare,
    run_optimisation,
    squared_norm,
)
from bastion.attacks.privacy.leakage.payload import Payload
from bastion.core import Classifier


@dataclass(frozen=True)
class IDLGConfig(LeakageConfig):
    """iDLG parameters: Gaussian dummy data (as DLG), L-BFGS lr 1, 300 iterations."""



def idlg_attack(model: Classifier, payload: Payload, config: IDLGConfig | None = None, *,
                reference: torch.Tensor | None = None, reference_labels: torch.Tensor | None = None,
                init_pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> LeakageResult:
    """Infer the label(s) analytically, then reconstruct the data as DLG does."""
    cfg = config or IDLGConfig()
    start = time.perf_counter()
    grad, b = prepare(model, payload, cfg, reference, reference_labels)
    dev = model.device
    labels = (grad.labels.to(dev) if cfg.use_payload_labels and grad.labels is not None
              else infer_labels(model, grad, b))
    gen = torch.Generator().manual_seed(cfg.seed)
    x = init_dummies(cfg.init, model.spec.shape, b, model.spec.bounds, labels, gen, dev, init_pool)
    x.requires_grad_(True)
    weights = attack_weights(grad)
    target = [grad.gradients[k] for k in weights]

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        _, g = dummy_gradients(model, weights, x, labels)
        dist = l2_distance(g, target)
        return dist, dist

    scorer = Scorer(None if reference is None else reference.to(dev), model.spec.bounds,
                    cfg.success_metric)
    dists, evals, conv, div = run_optimisation([x], objective, cfg, scorer, x,
                                               scale=squared_norm(target))
    return finish("idlg", model, x, labels, cfg, scorer, dists, evals, conv, div, start,
                  reference, reference_labels)
