"""Binary input detector (Metzen et al. 2017; the input-level variant of the Adversarial
Robustness Toolbox, `BinaryInputDetector`): a small network trained to tell clean inputs
(label 0) from adversarial ones (label 1) made by a given attack on the screened model.

Training data: the clean training inputs and their adversarial versions from a Bastion
attack (FGSM at eps 0.3 by default, the attack and budget Metzen et al. and the class
project's comparison train on), every example whether or not it fools the model, as in
Metzen et al. The detector network is `cnn-small` with two outputs; its score is the
log-odds z_adv - z_clean, and the threshold is calibrated on held-out benign inputs at the
chosen false-positive rate like every other detector here. Training is seeded (shuffling
and initialisation) and prints nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import Classifier, ConfigError, InputError, check_labels, require
from bastion.defenses.detect.base import DEFAULT_FPR, Detector, check_fpr


@dataclass(frozen=True)
class BinaryConfig:
    """Binary-detector settings.

    Attributes:
        attack: registry name of the attack that makes the adversarial training inputs.
        attack_params: its parameters (default FGSM eps 0.3).
        arch: detector network from the model zoo (two outputs).
        epochs, batch_size, lr: Adam training of the detector (a few epochs suffice).
        seed: seeds the initial weights and the shuffling.
        fpr: benign false-positive rate the threshold is calibrated at.
    """

    attack: str = "fgsm"
    attack_params: dict[str, Any] = field(default_factory=lambda: {"eps": 0.3})
    arch: str = "cnn-small"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    fpr: float = DEFAULT_FPR

    def __post_init__(self) -> None:
        check_fpr(self.fpr, "binary")
        for f in ("epochs", "batch_size"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"binary: {f} must be an integer >= 1, got {v!r}")
        require(isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool)
                and 0 < self.lr < float("inf"), f"binary: lr must be a positive number, got {self.lr!r}")
        require(isinstance(self.attack_params, dict), "binary: attack_params must be a mapping")


class BinaryDetector(Detector):
    """A trained clean-versus-adversarial classifier over inputs.

        det = BinaryDetector(model)            # FGSM eps 0.3 examples
        det.fit(x_train, y_train)              # generates them, trains 3 epochs
        det.calibrate(x_benign_heldout)        # threshold at 5% benign FPR
    """

    name = "binary"

    def __init__(self, classifier: Classifier, config: BinaryConfig | None = None) -> None:
        from bastion.attacks import registry
        from bastion.models import build_classifier

        cfg = config or BinaryConfig()
        super().__init__(classifier, cfg.fpr)
        assert self.classifier is not None
        self.config = cfg
        self.attack = registry.create(cfg.attack, **cfg.attack_params)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        try:
            self.net: Classifier = build_classifier(cfg.arch, classifier.spec, 2,
                                                    device=classifier.device, name="binary-detector")
        finally:
            torch.random.set_rng_state(gen_state)
        self.history: list[float] = []
        self.trained = False

    def differentiable_score(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trained:
            raise ConfigError("binary: the detector is not trained; call fit(x_train, y_train) first")
        z = self.net(x)
        return z[:, 1] - z[:, 0]

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> BinaryDetector:
        """Make adversarial versions of (x, y) with the configured attack on the screened
        model and train the detector on clean (0) versus adversarial (1). Returns self."""
        model = self.classifier
        assert model is not None
        self.check(x)
        check_labels(y, model.num_classes, x.shape[0])
        if x.shape[0] < 2:
            raise InputError("binary: fit needs at least 2 training inputs")
        dev = model.device
        x_adv = self.attack(model, x, y).x_adv.to(dev)
        data = torch.cat([x.to(dev), x_adv])
        labels = torch.cat([torch.zeros(x.shape[0], dtype=torch.long),
                            torch.ones(x.shape[0], dtype=torch.long)]).to(dev)
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        for p in self.net.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.net.train()
        self.history = []
        try:
            for _ in range(cfg.epochs):
                order = torch.randperm(data.shape[0], generator=gen).to(dev)
                total = 0.0
                for i in range(0, data.shape[0], cfg.batch_size):
                    idx = order[i:i + cfg.batch_size]
                    loss = F.cross_entropy(self.net(data[idx]), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * idx.numel()
                self.history.append(total / data.shape[0])
        finally:
            self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.trained = True
        with torch.no_grad():
            acc = float((self.net.predict(data) == labels).float().mean())
        self.calibration = {"train_inputs": int(x.shape[0]), "train_accuracy": acc,
                            "train_loss": self.history}
        return self

    def calibrate(self, x_benign: torch.Tensor, fpr: float | None = None) -> float:
        info = dict(self.calibration)
        t = super().calibrate(x_benign, fpr)
        self.calibration = {**info, **self.calibration}
        return t

    def params(self) -> dict[str, Any]:
        c = self.config
        return {"attack": c.attack, "attack_params": dict(c.attack_params), "arch": c.arch,
                "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr, "seed": c.seed}
