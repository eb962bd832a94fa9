"""Client Privacy Leakage (CPL) attack (Wei et al., ESORICS 2020; dissertation ch. 5,
Algorithm 4).

    grad <- payload gradient, or (w_before - w_after) / lr for a weight update
    x_0  <- INIT(shape)                        (patterned, random, dark, light, R/G/B, optimal)
    y    <- argmin_c grad(output layer)_c      (label inference)
    repeat T times, or until the match stops improving (CPL: D < 1e-4; see common.py):
        D(x) = || d loss(f(x; w), y) / dw - grad ||^2 + alpha || softmax(f(x; w)) - onehot(y) ||^2
        x    <- optimiser step on D            (L-BFGS by default; Adam / SGD selectable)

Entry point: `cpl_attack(model, payload, CPLConfig(...)) -> LeakageResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
from bastion.core import Classifier, ConfigError


@dataclass(frozen=True)
class CPLConfig(LeakageConfig):
    """CPL parameters (LeakageConfig plus the label regulariser).

    Attributes:
        init: 'patterned' (the dissertation's default seed).
        alpha: weight of the label regulariser ||softmax(f(x)) - onehot(y)||^2.
    """

    init: str = "patterned"
    alpha: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")


def cpl_attack(model: Classifier, payload: Payload, config: CPLConfig | None = None, *,
               reference: torch.Tensor | None = None, reference_labels: torch.Tensor | None = None,
               init_pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> LeakageResult:
    """Reconstruct the training batch behind `payload` with CPL.

    Args:
        model: the attacker's copy of the architecture (its own weights are not used; the
            payload's weights are).
        payload: `SharedGradient` or `WeightUpdate`.
        config: `CPLConfig`.
        reference, reference_labels: the victim's batch, for metrics only (never used by
            the optimisation).
        init_pool: real examples (x, y) for init='optimal'.
    """
    cfg = config or CPLConfig()
    start = time.perf_counter()
    grad, b = prepare(model, payload, cfg, reference, reference_labels)
    dev = model.device
    if cfg.use_payload_labels and grad.labels is not None:
        labels = grad.labels.to(dev)
    else:
        labels = infer_labels(model, grad, b)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = init_dummies(cfg.init, model.spec.shape, b, model.spec.bounds, labels, gen, dev, init_pool)
    x.requires_grad_(True)
    weights = attack_weights(grad)
    target = [grad.gradients[k] for k in weights]
    onehot = F.one_hot(labels, model.num_classes).float()

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        out, g = dummy_gradients(model, weights, x, labels)
        dist = l2_distance(g, target)
        loss = dist + cfg.alpha * ((out.softmax(-1) - onehot) ** 2).sum(-1).mean() if cfg.alpha else dist
        return loss, dist

    scorer = Scorer(None if reference is None else reference.to(dev), model.spec.bounds,
                    cfg.success_metric)
    dists, evals, conv, div = run_optimisation([x], objective, cfg, scorer, x,
                                               scale=squared_norm(target))
    return finish("cpl", model, x, labels, cfg, scorer, dists, evals, conv, div, start,
                  reference, reference_labels)
