"""Train a small CNN on the embedded MNIST subset, attack it, and audit it.

    .venv/bin/python examples/quickstart.py

Runs in about a minute on 2 CPU cores; writes models/quickstart.st and runs/quickstart/.
"""

from __future__ import annotations

from pathlib import Path

from bastion.attacks.evasion import FGSM, PGD
from bastion.audit import default_config, run_audit
from bastion.core import InputSpec
from bastion.data import load
from bastion.models import build_classifier, save_classifier
from bastion.training import TrainConfig, fit


def main() -> None:
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    model = build_classifier("cnn-small", InputSpec(train.input_shape), train.num_classes)
    report = fit(model, train, test, TrainConfig(epochs=3, batch_size=32))
    print(f"test accuracy {report.test_accuracy:.3f}")

    x, y = test.x[:200], test.y[:200]
    for attack in (FGSM(eps=0.2), PGD(eps=0.2, steps=40, alpha=0.01)):
        res = attack(model, x, y)
        print(f"{attack.name:5s} eps=0.2  robust accuracy {res.robust_accuracy:.3f}  "
              f"mean Linf {res.norms['linf'].mean():.3f}  {res.wall_time:.2f} s")

    ckpt = save_classifier(Path("models/quickstart.st"), model, dataset="mnist-5k",
                           test_accuracy=report.test_accuracy)
    cfg = default_config()
    cfg.data.n = 200
    run = run_audit(ckpt, cfg, "runs/quickstart")
    print(f"report: {run.out_dir / 'report.html'}")


if __name__ == "__main__":
    main()
