# Training-time defense benchmark (see the docstring).
"""Adversarial-training epoch time against a bare (k+1)-pass loop, same model and data.

    python benchmarks/defenses.py [--model cnn-small|cnn7] [--n 1000] [--steps 7]
                                  [--batch 50] [--rounds 5] [--threads 1]

One epoch of `adversarial_fit(..., PGDTraining(eps=0.3, steps=k))` over the first n
mnist-5k training images is timed against bare loops over the same minibatches:

* bare (input grads): per minibatch, k passes of forward + input-gradient backward
  (`torch.autograd.grad` w.r.t. the input, the least a k-step attack needs), then one
  forward + full backward + optimiser step. No random start, sign, projection or mode
  switches: the floor a PGD-k epoch can reach.
* bare (full backward): the same with `loss.backward()` on all k + 1 passes (what "k + 1
  forward+backward passes" means when weight gradients are computed too).

Both bare loops run in the same memory layout as the trainer (`Classifier.fast_layout`,
channels-last for a conv net on CPU). The methods are timed round-robin, one epoch of
each per round, for `--rounds` rounds; medians are reported, so that load changes affect
every method alike. When ART imports, its `AdversarialTrainerMadryPGD` runs the same
epoch as well (optional; ART is not a dependency).

Writes benchmarks/results/defenses.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.core import Classifier, InputSpec
from bastion.data import load
from bastion.models import build_classifier
from bastion.training import PGDTraining, TrainConfig, adversarial_fit
from bastion.training.fit import make_optimizer


def fresh(arch: str) -> Classifier:
    torch.manual_seed(0)
    return build_classifier(arch, InputSpec((1, 28, 28)), 10, device="cpu")


def bastion_epoch(arch: str, x: torch.Tensor, y: torch.Tensor, k: int, batch: int) -> float:
    from bastion.data import Dataset
    clf = fresh(arch)
    res = adversarial_fit(clf, Dataset(x, y, 10), None, PGDTraining(eps=0.3, steps=k),
                          TrainConfig(epochs=1, batch_size=batch, progress=False))
    return res.wall_time


def bare_epoch(arch: str, x: torch.Tensor, y: torch.Tensor, k: int, batch: int,
               full_backward: bool) -> float:
    clf = fresh(arch)
    opt = make_optimizer(clf.parameters(), TrainConfig())
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(x.shape[0], generator=gen)
    with clf.fast_layout():
        start = time.perf_counter()
        for i in range(0, x.shape[0], batch):
            idx = order[i:i + batch]
            xb, yb = x[idx], y[idx]
            for _ in range(k):
                xr = xb.detach().requires_grad_(True)
                loss = F.cross_entropy(clf(xr), yb, reduction="sum")
                if full_backward:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                else:
                    torch.autograd.grad(loss, xr)
            loss = F.cross_entropy(clf(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start


def art_epoch(arch: str, x: torch.Tensor, y: torch.Tensor, k: int, batch: int) -> float:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier
    clf = fresh(arch)
    est = PyTorchClassifier(model=clf, loss=torch.nn.CrossEntropyLoss(),
                            optimizer=make_optimizer(clf.parameters(), TrainConfig()),
                            input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="cpu")
    trainer = AdversarialTrainerMadryPGD(est, nb_epochs=1, batch_size=batch, eps=0.3,
                                         eps_step=2.5 * 0.3 / k, max_iter=k)
    start = time.perf_counter()
    trainer.fit(x.numpy(), y.numpy())
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn-small")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "defenses.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = load("mnist-5k", "train").take(args.n)
    x, y, k, b = train.x, train.y, args.steps, args.batch
    methods: dict[str, Callable[[], float]] = {
        "bastion_pgd_at": lambda: bastion_epoch(args.model, x, y, k, b),
        "bare_input_grads": lambda: bare_epoch(args.model, x, y, k, b, False),
        "bare_full_backward": lambda: bare_epoch(args.model, x, y, k, b, True),
    }
    try:
        import art  # noqa: F401
        methods["art_madry_pgd"] = lambda: art_epoch(args.model, x, y, k, b)
    except ImportError:
        print("ART not installed: skipping AdversarialTrainerMadryPGD")
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for m, fn in methods.items():
            times[m].append(fn())
    med = {m: statistics.median(v) for m, v in times.items()}
    paired = {m: statistics.median(a / c for a, c in zip(times["bastion_pgd_at"], times[m]))
              for m in methods if m != "bastion_pgd_at"}
    for m in methods:
        print(f"{m:22s} {med[m]:.3f} s/epoch")
    for m, r in paired.items():
        print(f"bastion_pgd_at / {m}: {r:.3f}x (median of paired ratios)")
    out = {"model": args.model, "n_images": args.n, "pgd_steps": k, "batch_size": b,
           "rounds": args.rounds, "threads": args.threads, "seconds_per_epoch": med,
           "raw_seconds": times, "ratio_to": paired, "goal": "bastion_pgd_at / bare <= 1.1",
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
