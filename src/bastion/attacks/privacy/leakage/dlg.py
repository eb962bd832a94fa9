"""Deep Leakage from Gradients (DLG; Zhu, Liu and Han, NeurIPS 2019).

    x', y' <- N(0, 1) dummy data and dummy label logits
    repeat T (300) times with L-BFGS (lr 1):
        g'  = d CE(f(x'; w), softmax(y')) / dw           (soft-label cross-entropy)
        D   = || g' - g ||^2                               (squared L2, all layers)
        x', y' <- L-BFGS step on D

Data and label are optimised jointly; the label is read off as argmax softmax(y').
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
    init_dummies,
    l2_distance,
    prepare,
    run_optimisation,
    squared_norm,
)
from bastion.attacks.privacy.leakage.payload import Payload
from bastion.core import Classifier


@dataclass(frozen=True)
class DLGConfig(LeakageConfig):
    """DLG parameters: Gaussian dummy data, L-BFGS with lr 1, 300 iterations.

    `use_payload_labels` defaults to False: DLG recovers the label jointly with the data.
    """

    use_payload_labels: bool = False


def dlg_attack(model: Classifier, payload: Payload, config: DLGConfig | None = None, *,
               reference: torch.Tensor | None = None, reference_labels: torch.Tensor | None = None,
               init_pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> LeakageResult:
    """Reconstruct data and labels behind `payload` with DLG (see module docstring)."""
    cfg = config or DLGConfig()
    start = time.perf_counter()
    grad, b = prepare(model, payload, cfg, reference, reference_labels)
    dev = model.device
    gen = torch.Generator().manual_seed(cfg.seed)
    fixed = grad.labels.to(dev) if cfg.use_payload_labels and grad.labels is not None else None
    seed_labels = fixed if fixed is not None else torch.zeros(b, dtype=torch.long, device=dev)
    x = init_dummies(cfg.init, model.spec.shape, b, model.spec.bounds, seed_labels, gen, dev, init_pool)
    x.requires_grad_(True)
    label_logits = torch.randn((b, model.num_classes), generator=gen).to(dev).requires_grad_(True)
    weights = attack_weights(grad)
    target = [grad.gradients[k] for k in weights]

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        y = fixed if fixed is not None else label_logits.softmax(-1)
        _, g = dummy_gradients(model, weights, x, y)
        dist = l2_distance(g, target)
        return dist, dist

    scorer = Scorer(None if reference is None else reference.to(dev), model.spec.bounds,
                    cfg.success_metric)
    variables = [x] if fixed is not None else [x, label_logits]
    dists, evals, conv, div = run_optimisation(variables, objective, cfg, scorer, x,
                                               scale=squared_norm(target))
    labels = fixed if fixed is not None else label_logits.detach().argmax(-1)
    return finish("dlg", model, x, labels, cfg, scorer, dists, evals, conv, div, start,
                  reference, reference_labels)
