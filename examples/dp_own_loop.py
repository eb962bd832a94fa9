"""Differentially private training in your own PyTorch loop (DP-SGD, Abadi et al. 2016).

    .venv/bin/python examples/dp_own_loop.py            # secure noise, about 2 s on one core
    .venv/bin/python examples/dp_own_loop.py --epsilon 2 # calibrate sigma to epsilon = 2

Trains a small MLP on scikit-learn's 8x8 digits with `bastion.training.PrivacyEngine`:
the loop is plain PyTorch; the engine samples the batches (Poisson, rate q = 64 / 1437),
clips every example's gradient to norm 1, adds Gaussian noise and counts the privacy spent.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bastion.data import load
from bastion.training.private import PrivacyEngine

DELTA = 1e-5


def main(epochs: int = 15, epsilon: float | None = None, noise_multiplier: float = 1.0,
         max_grad_norm: float = 1.0, lr: float = 0.05, noise_seed: int | None = None,
         verbose: bool = True) -> dict[str, Any]:
    """Train privately and return the test accuracy and the epsilon spent."""
    train, test = load("digits", "train"), load("digits", "test")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=64)

    engine = PrivacyEngine(accountant="rdp")
    if epsilon is None:
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, noise_seed=noise_seed)
    else:
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon,
            target_delta=DELTA, epochs=epochs, max_grad_norm=max_grad_norm, noise_seed=noise_seed)

    accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(test.x).argmax(1) == test.y).float().mean().item()
        if verbose:
            print(f"epoch {epoch + 1:2d}  test accuracy {accuracy:.3f}  "
                  f"epsilon {engine.get_epsilon(DELTA):.3f} at delta {DELTA:g}")
    return {"test_accuracy": accuracy, "epsilon": engine.get_epsilon(DELTA), "steps": engine.steps,
            "noise_multiplier": engine.noise_multiplier, "sample_rate": engine.sample_rate}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--epsilon", type=float, default=None, help="calibrate sigma to this epsilon")
    ap.add_argument("--sigma", type=float, default=1.0, help="noise multiplier (without --epsilon)")
    args = ap.parse_args()
    out = main(epochs=args.epochs, epsilon=args.epsilon, noise_multiplier=args.sigma)
    print(f"final: test accuracy {out['test_accuracy']:.3f}, epsilon {out['epsilon']:.3f}, "
          f"sigma {out['noise_multiplier']:.3f}, {out['steps']} steps at q = {out['sample_rate']:.4f}")
