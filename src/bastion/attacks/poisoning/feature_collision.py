"""Feature collision, "Poison Frogs" (Shafahi et al. 2018): targeted clean-label poisons.

Base images of the class the attacker wants a chosen target test image to receive are
moved, by forward-backward splitting, until their penultimate features collide with the
target's while they stay close to the base in input space:

    forward:  x^ = x - lr * grad_x ||f(x) - f(t)||^2
    backward: x  = (x^ + lr * beta * b) / (1 + lr * beta)      (proximal step of beta ||x - b||^2)

with beta = beta0 * 2048^2 / dim(b)^2 (beta0 = 0.25, the paper's scaling). Watermarking
blends the target into the base first (x = opacity * t + (1 - opacity) * b), which the
paper needs for end-to-end training. A poison whose objective ||f(x) - f(t)||^2 +
beta ||x - b||^2 rises after a step goes back to its previous point with half the step
size (the step decay of the authors' code), so a too-large `lr` slows the attack instead of
making it diverge. Labels stay the base class: a human labeller sees a correctly labelled
image. Success: a model retrained on the result labels the target image as the base class
(`bastion.attacks.poisoning.retrain_last_layer` is the paper's transfer-learning victim).
"""

from __future__ import annotations

import torch

from bastion.attacks.poisoning.checks import check_class, choose, replaced
from bastion.attacks.poisoning.features import penultimate
from bastion.attacks.poisoning.record import PoisonRecord, PoisonResult
from bastion.core import Classifier, ConfigError, check_number
from bastion.data.dataset import Dataset


def feature_collision(data: Dataset, model: Classifier, target_image: torch.Tensor, base_class: int,
                      n_poisons: int = 50, opacity: float = 0.3, beta0: float = 0.25, lr: float = 0.01,
                      steps: int = 200, seed: int = 0) -> PoisonResult:
    """Craft `n_poisons` poisons from base-class training images (all optimised in one batch).

    Args:
        data: clean training set; the poisons replace the chosen base images in place.
        model: the feature extractor (a classifier trained on clean data; its penultimate layer).
        target_image: the test input [C, H, W] the attacker wants classified as `base_class`.
        base_class: the class the target should receive.
        opacity: watermark opacity gamma in [0, 1) (0 = none; Shafahi et al. use 0.3).
        beta0: the proximal weight before scaling by 2048^2 / dim^2.
        lr: step size of the forward step.
        steps: forward-backward iterations.
    """
    base_class = check_class(base_class, data, "base")
    check_number(n_poisons, "n_poisons", low=1, high=len(data), integer=True)
    check_number(opacity, "opacity", low=0.0, high=1.0)
    if opacity >= 1.0:
        raise ConfigError("opacity must be < 1 (1 would replace the base by the target)")
    check_number(beta0, "beta0", low=0.0)
    check_number(lr, "lr", low=0.0, low_open=True)
    check_number(steps, "steps", low=0, high=1_000_000, integer=True)
    t = target_image.reshape(1, *data.input_shape).float() if target_image.dim() == len(data.input_shape) \
        else target_image.float()
    if tuple(t.shape[1:]) != tuple(data.input_shape) or t.shape[0] != 1:
        raise ConfigError(f"target_image must have shape {data.input_shape}, got {tuple(target_image.shape)}")
    idx = choose(torch.nonzero(data.y == base_class).flatten(), int(n_poisons), seed,
                 f"examples of base class {base_class}")
    dev = model.device
    lo, hi = model.spec.bounds
    t = t.to(dev)
    base = ((1 - opacity) * data.x[idx].to(dev) + opacity * t).clamp(lo, hi)
    dim = base[0].numel()
    beta = beta0 * 2048.0 ** 2 / float(dim) ** 2
    was = model.training
    model.eval()
    try:
        ft = penultimate(model, t).detach()
        x = base.clone()
        step = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), float(lr), device=dev)
        prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        for _ in range(int(steps)):
            x.requires_grad_(True)
            with torch.enable_grad():
                obj = (penultimate(model, x, grad=True) - ft).pow(2).sum(1)
                (g,) = torch.autograd.grad(obj.sum(), x)
            x, obj = x.detach(), obj.detach() + beta * (x.detach() - base).flatten(1).pow(2).sum(1)
            if prev is not None:   # a poison whose objective rose: back to its last point, half the step
                worse = obj > prev[1]
                x[worse], g[worse], obj[worse] = prev[0][worse], prev[2][worse], prev[1][worse]
                step[worse] *= 0.5
            prev = (x, obj, g)
            x = x - step * g
            x = ((x + step * beta * base) / (1 + step * beta)).clamp(lo, hi)
        with torch.no_grad():
            dist = (penultimate(model, x) - ft).norm(dim=1)
            dist0 = (penultimate(model, data.x[idx].to(dev)) - ft).norm(dim=1)
    finally:
        model.train(was)
    xs = data.x.clone()
    xs[idx] = x.detach().cpu()
    rec = PoisonRecord("feature-collision", idx, data.y[idx].clone(), data.y[idx].clone(), target=base_class,
                       params={"n_poisons": int(n_poisons), "base_class": base_class, "opacity": opacity,
                               "beta0": beta0, "beta": beta, "lr": lr, "steps": int(steps), "seed": seed},
                       extras={"target_image": t.detach().cpu()[0],
                               "feature_distance_before": float(dist0.mean()),
                               "feature_distance_after": float(dist.mean())})
    return PoisonResult(replaced(data, xs), rec)
