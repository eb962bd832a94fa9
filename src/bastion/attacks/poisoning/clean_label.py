"""Clean-label backdoor (Turner, Tsipras & Madry 2019): poison only images that already
belong to the target class, so every label stays correct. Each chosen image is first made
hard to classify with an Linf PGD perturbation of size eps (maximising the loss of a model
trained on clean data, so the network cannot fit it from its natural features), then the
trigger is stamped on it; a model trained on the result learns to rely on the trigger."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bastion.attacks.poisoning.checks import (
    check_class,
    check_fraction,
    choose,
    count_for,
    replaced,
)
from bastion.attacks.poisoning.record import PoisonRecord, PoisonResult
from bastion.attacks.poisoning.trigger import Trigger
from bastion.core import Classifier, ConfigError, check_number
from bastion.data.dataset import Dataset


def pgd_away(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
             step_size: float | None = None, batch_size: int = 256) -> torch.Tensor:
    """Untargeted Linf PGD (Madry et al. 2018) that raises the cross-entropy of the true labels."""
    alpha = 2.5 * eps / steps if step_size is None else step_size
    dev, out = clf.device, []
    lo, hi = clf.spec.bounds
    was = clf.training
    clf.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            adv = xb.clone()
            for _ in range(steps):
                adv.requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(F.cross_entropy(clf(adv), yb), adv)
                adv = (adv.detach() + alpha * g.sign()).clamp(xb - eps, xb + eps).clamp(lo, hi)
            out.append(adv.detach().cpu())
    finally:
        clf.train(was)
    return torch.cat(out) if out else x.clone()


def clean_label(data: Dataset, model: Classifier, fraction: float, target: int = 0,
                trigger: Trigger | None = None, eps: float = 0.3, steps: int = 20,
                seed: int = 0) -> PoisonResult:
    """Poison round(fraction * len(data)) images of the target class (labels untouched).

    Args:
        data: clean training images.
        model: a classifier trained on clean data (the attacker's surrogate).
        fraction: share p of the whole training set to poison, in [0, 1]; the poisons are
            drawn from the target class, so p * N must not exceed its size.
        target: the backdoor's target class.
        eps: Linf size of the adversarial perturbation (0 = trigger only, the baseline
            Turner et al. show fails); 0.3 on MNIST.
        steps: PGD iterations.
    """
    check_fraction(fraction)
    target = check_class(target, data, "target")
    check_number(eps, "eps", low=0.0, high=1.0)
    check_number(steps, "steps", low=1, high=100_000, integer=True)
    trigger = trigger or Trigger()
    trigger.mask_pattern(tuple(data.input_shape))
    if tuple(model.spec.shape) != tuple(data.input_shape):
        raise ConfigError(f"the surrogate model expects inputs of shape {model.spec.shape}, the data has "
                          f"{data.input_shape}")
    idx = choose(torch.nonzero(data.y == target).flatten(), count_for(fraction, len(data)), seed,
                 f"examples of target class {target}")
    x = data.x.clone()
    if idx.numel():
        pert = pgd_away(model, x[idx], data.y[idx], eps, steps) if eps > 0 else x[idx]
        x[idx] = trigger.apply(pert)
    rec = PoisonRecord("clean-label", idx, data.y[idx].clone(), data.y[idx].clone(), target=target,
                       trigger=trigger, params={"fraction": fraction, "target": target, "eps": eps,
                                                "steps": steps, "seed": seed, "trigger": trigger.to_dict()})
    return PoisonResult(replaced(data, x), rec)
