"""Target-class selection for targeted attacks (dissertation ch. 2: "most likely" other
class and "least likely" class; "next" = (argmax + 1) mod C; random; explicit)."""

from __future__ import annotations

import torch

from bastion.core import Classifier, ConfigError, check_labels, unknown_name

TARGET_MODES = ("most", "ll", "next", "random")


def select_targets(model: Classifier, x: torch.Tensor, y: torch.Tensor, mode: str | torch.Tensor,
                   seed: int = 0) -> torch.Tensor:
    """Return target labels (never equal to `y`).

    mode: 'most' (highest-scoring class other than y), 'll' (lowest-scoring class),
    'next' ((argmax + 1) mod C), 'random' (uniform over classes != y, seeded), or an
    explicit tensor of labels.
    """
    dev = model.device
    y = y.to(dev)
    if isinstance(mode, torch.Tensor):
        check_labels(mode, model.num_classes, x.shape[0], name="target")
        if bool((mode.to(dev) == y).any()):
            raise ConfigError("explicit target labels must differ from the true labels")
        return mode.to(dev, torch.long)
    mode = mode.lower()
    if mode not in TARGET_MODES:
        raise unknown_name("target mode", mode, TARGET_MODES)
    c = model.num_classes
    if mode == "random":
        g = torch.Generator().manual_seed(seed)
        off = torch.randint(1, c, (x.shape[0],), generator=g).to(dev)
        return (y + off) % c
    logits = model.logits(x)
    if mode == "next":
        t = (logits.argmax(-1) + 1) % c
        return torch.where(t == y, (t + 1) % c, t)
    masked = logits.clone()
    fill = float("-inf") if mode == "most" else float("inf")
    masked[torch.arange(x.shape[0], device=dev), y] = fill
    return masked.argmax(-1) if mode == "most" else masked.argmin(-1)
