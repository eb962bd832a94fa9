"""Training-time defenses: PGD / fast adversarial training and TRADES raise PGD robust
accuracy on a small run; defensive distillation flattens input gradients; configs fail
fast; the defense reaches the checkpoint metadata."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bastion.attacks.evasion import PGD
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data import Dataset
from bastion.models import build_classifier, load_classifier, save_classifier
from bastion.models.checkpoint import read_metadata
from bastion.training import (
    TRADES,
    DistillationConfig,
    FastTraining,
    PGDTraining,
    TrainConfig,
    adversarial_fit,
    defensive_distillation,
)
from bastion.training.adversarial import pgd_examples

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.3
CFG = TrainConfig(epochs=6, batch_size=50, seed=0, progress=False)


def _fresh(arch: str = "cnn-small", **args) -> Classifier:
    torch.manual_seed(0)
    return build_classifier(arch, InputSpec((1, 28, 28)), 10, args, device="cpu")


def _robust(clf: Classifier, test: Dataset, n: int = 200) -> float:
    return PGD(eps=EPS, steps=20, seed=0)(clf, test.x[:n], test.y[:n]).robust_accuracy


@pytest.fixture(scope="module")
def undefended_robust(small_model, mnist_test) -> float:
    """The plainly trained fixture model (~93% clean) under the same PGD-20 at eps 0.3
    (about 2%)."""
    return _robust(small_model, mnist_test)


@pytest.mark.parametrize("defense,floor", [
    (PGDTraining(eps=EPS, steps=5, eps_ramp_epochs=2), 0.25),
    (FastTraining(eps=EPS, eps_ramp_epochs=2), 0.2),
    (TRADES(eps=EPS, steps=5, step_size=2.5 * EPS / 5, beta=6.0, eps_ramp_epochs=2), 0.2),
], ids=["pgd-at", "fast-at", "trades"])
def test_adversarial_training_raises_pgd_robust_accuracy(defense, floor, mnist_train, mnist_test,
                                                         undefended_robust) -> None:
    clf = _fresh()
    res = adversarial_fit(clf, mnist_train.take(1000), mnist_test.take(200), defense, CFG)
    robust = _robust(clf, mnist_test)
    assert undefended_robust < 0.1
    assert robust >= floor and robust >= undefended_robust + 0.15, (robust, undefended_robust)
    assert res.test_accuracy > 0.6
    assert [h["eps"] for h in res.history][-1] == pytest.approx(EPS)
    assert res.history[0]["eps"] < EPS  # the ramp
    assert clf.meta["defense"]["name"] == defense.name and clf.meta["defense"]["eps"] == EPS


def test_inner_attack_runs_in_eval_mode_with_input_gradients_only(mnist_train) -> None:
    """Dropout makes train-mode forwards random: the attack's forwards (input requiring
    grad) must all be in eval mode, the update's in train mode; the attack leaves no
    weight gradients behind."""
    clf = _fresh("cnn7", dropout=0.5)
    modes: list[tuple[bool, bool]] = []
    clf.module.register_forward_pre_hook(lambda m, a: modes.append((m.training, a[0].requires_grad)))
    x, y = mnist_train.x[:16], mnist_train.y[:16]
    adv = pgd_examples(clf, x, y, 0.3, 3, 0.1)
    assert all(p.grad is None for p in clf.parameters())
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6 and float((adv - x).abs().max()) > 0.1
    modes.clear()
    adversarial_fit(clf, mnist_train.take(32), None, PGDTraining(eps=0.3, steps=3),
                    TrainConfig(epochs=1, batch_size=16, progress=False))
    attack = [m for m in modes if m[1]]
    update = [m for m in modes if not m[1]]
    assert len(attack) == 2 * 3 and not any(t for t, _ in attack)
    assert len(update) >= 2 and all(t for t, _ in update[:2])  # then eval-mode accuracy passes


def test_adversarial_training_is_seeded(mnist_train) -> None:
    runs = []
    for _ in range(2):
        clf = _fresh("mlp", hidden=[32])
        runs.append(adversarial_fit(clf, mnist_train.take(200), None,
                                    FastTraining(eps=0.1), TrainConfig(epochs=2, seed=3,
                                                                       progress=False)).history)
    assert runs[0] == runs[1]


def test_distillation_flattens_input_gradients(small_model, mnist_train, mnist_test) -> None:
    """Papernot et al. (2016): trained at T, deployed at T = 1, the student's loss
    gradient w.r.t. the input nearly vanishes (gradient masking, the reason it falls to
    logit-based attacks)."""
    teacher, student = _fresh(), _fresh()
    cfg = DistillationConfig(temperature=50)
    res = defensive_distillation(teacher, student, mnist_train.take(1000), mnist_test.take(200),
                                 cfg, TrainConfig(epochs=4, batch_size=50, lr=1e-2, progress=False))
    assert res.test_accuracy > 0.7 and res.teacher_test_accuracy > 0.7
    x, y = mnist_test.x[:200], mnist_test.y[:200]

    def grad_norms(clf: Classifier, temperature: float = 1.0) -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(clf(xr) / temperature, y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
        return g.flatten(1).norm(dim=1)

    plain, distilled = grad_norms(small_model), grad_norms(student)
    teacher_at_t = grad_norms(teacher, cfg.temperature)
    # per-example medians: the few inputs right on a decision boundary dominate a mean
    assert float(distilled.median()) * 1000 < float(plain.median()), (distilled, plain)
    assert float(distilled.median()) * 1000 < float(teacher_at_t.median())
    assert float((distilled == 0).float().mean()) > 0.5  # softmax saturated in float32
    assert student.meta["defense"] == res.defense and res.defense["temperature"] == 50


def test_defense_recorded_in_checkpoint(tmp_path, mnist_train) -> None:
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [16]}, device="cpu")
    res = adversarial_fit(clf, mnist_train.take(64), None, PGDTraining(eps=0.1, steps=2),
                          TrainConfig(epochs=1, progress=False))
    path = save_classifier(tmp_path / "at.st", clf, dataset="mnist-5k", **res.metadata())
    meta = read_metadata(path)
    assert meta["defense"]["name"] == "pgd-at" and meta["defense"]["steps"] == 2
    assert load_classifier(path, device="cpu").meta["defense"]["eps"] == 0.1


@pytest.mark.parametrize("defense,match", [
    (PGDTraining(eps=-0.1), "eps"), (PGDTraining(steps=0), "steps"),
    (PGDTraining(step_size=0), "step_size"), (PGDTraining(clean_fraction=1.0), "clean_fraction"),
    (PGDTraining(norm="l7"), "norm"), (PGDTraining(eps_ramp_epochs=-1), "eps_ramp"),
    (PGDTraining(eps=2.0), "exceeds"), (FastTraining(eps=float("nan")), "eps"),
    (FastTraining(alpha=-1), "alpha"), (TRADES(beta=-1), "beta"), (TRADES(steps=0), "steps"),
])
def test_bad_adversarial_training_config_fails_before_training(defense, match, mnist_train) -> None:
    clf = _fresh("mlp", hidden=[8])
    before = [p.clone() for p in clf.parameters()]
    with pytest.raises(ConfigError, match=match):
        adversarial_fit(clf, mnist_train.take(10), None, defense, TrainConfig(epochs=1))
    assert all(torch.equal(a, b) for a, b in zip(before, clf.parameters()))
    assert "defense" not in clf.meta


def test_bad_distillation_config(mnist_train) -> None:
    for t in (0.0, -5.0, float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            defensive_distillation(_fresh("mlp"), _fresh("mlp"), mnist_train.take(10),
                                   cfg=DistillationConfig(temperature=t))
    clf = _fresh("mlp")
    with pytest.raises(ConfigError, match="different"):
        defensive_distillation(clf, clf, mnist_train.take(10))
    with pytest.raises(ConfigError, match="unknown adversarial-training"):
        adversarial_fit(clf, mnist_train.take(10), None, "pgd")  # type: ignore[arg-type]


def test_paper_defaults() -> None:
    """Madry et al. MNIST (0.3, 40 steps, random start), Wong et al. alpha = 1.25 eps,
    TRADES beta 6 with 40 steps of 0.01, Papernot et al. T = 100."""
    pgd = PGDTraining()
    assert (pgd.eps, pgd.steps, pgd.random_start, pgd.clean_fraction) == (0.3, 40, True, 0.0)
    assert pgd.alpha(0.3) == pytest.approx(2.5 * 0.3 / 40)
    assert FastTraining().step(0.3) == pytest.approx(0.375)
    assert FastTraining().step(0.15) == pytest.approx(0.1875)  # scales with a ramped eps
    t = TRADES()
    assert (t.beta, t.eps, t.steps, t.step_size) == (6.0, 0.3, 40, 0.01)
    assert DistillationConfig().temperature == 100.0


def test_l2_inner_attack_stays_in_the_ball(mnist_train) -> None:
    clf = _fresh("mlp", hidden=[16])
    x, y = mnist_train.x[:8], mnist_train.y[:8]
    adv = pgd_examples(clf, x, y, 1.5, 5, 2.5 * 1.5 / 5, norm="l2")
    norms = (adv - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 1.5 + 1e-4 and float(norms.min()) > 0.5
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_non_finite_loss_stops_adversarial_training_before_the_weights(mnist_train) -> None:
    from bastion.training import TrainConfig
    from bastion.training.adversarial import train_loop
    from bastion.training.fit import DivergedError

    clf = _fresh("mlp")
    before = {k: v.clone() for k, v in clf.state_dict().items()}

    def nan_step(idx, done):
        logits = clf(mnist_train.x[:len(idx)])
        return logits.sum() * float("nan"), logits, {}

    with pytest.raises(DivergedError, match="non-finite loss"):
        train_loop(clf, mnist_train.take(64), None, TrainConfig(epochs=1, batch_size=32,
                                                                progress=False), nan_step, "test")
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
