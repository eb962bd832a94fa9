"""Shokri et al., "Membership Inference Attacks Against Machine Learning Models"
(IEEE S&P 2017): shadow models + per-class attack models.

k shadow models are trained like the target on the attacker's own data, which is
disjoint from the target's training set; each shadow's training half gives IN records and
the other half OUT records. For every class c an attack classifier learns
(prediction vector of a shadow on a record of class c) -> IN/OUT; it is then applied to the
target's prediction vectors. The paper's attack models are small neural networks (one
hidden layer); scikit-learn's MLPClassifier is the default here, logistic regression and
gradient boosting are alternatives. Higher score (the attack model's P(IN)) = member.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.attacks.privacy.membership.signals import SignalMatrix
from bastion.core import ConfigError, InputError

CLASSIFIERS = ("mlp", "logreg", "gbdt")
FEATURES = ("prob", "logprob")


@dataclass(frozen=True)
class ShokriConfig:
    """Attributes:
        classifier: 'mlp' (one hidden layer of `hidden` units, as the paper), 'logreg' or
            'gbdt' (histogram gradient boosting).
        hidden: hidden units of the MLP attack model (64).
        features: 'prob' (the prediction vector, as the paper) or 'logprob' (its log,
            which separates confidences close to 1 better).
        max_rows_per_class: IN and OUT rows each used to train one class's attack model
            (random subset; bounds the fitting time).
        seed: seeds subsampling and the attack models.
    """

    classifier: str = "mlp"
    hidden: int = 64
    features: str = "prob"
    max_rows_per_class: int = 2000
    seed: int = 0

    def validate(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"unknown attack classifier {self.classifier!r}; valid: {', '.join(CLASSIFIERS)}")
        if self.features not in FEATURES:
            raise ConfigError(f"unknown features {self.features!r}; valid: {', '.join(FEATURES)}")
        if self.max_rows_per_class < 2 or self.hidden < 1:
            raise ConfigError("max_rows_per_class must be >= 2 and hidden >= 1")


def _features(probs: torch.Tensor, kind: str) -> np.ndarray:
    p = probs.double()
    if kind == "logprob":
        p = p.clamp_min(1e-30).log()
    return p.cpu().numpy()


def _make(cfg: ShokriConfig) -> Any:
    if cfg.classifier == "mlp":
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(cfg.hidden,), max_iter=300,
                                                             random_state=cfg.seed))
    if cfg.classifier == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    from sklearn.ensemble import HistGradientBoostingClassifier
    return HistGradientBoostingClassifier(random_state=cfg.seed)


@dataclass
class ShokriAttack:
    """Fit per-class attack models on shadow signals, then score target signals."""

    cfg: ShokriConfig = field(default_factory=ShokriConfig)
    models: dict[int, Any] = field(default_factory=dict)
    constant: dict[int, float] = field(default_factory=dict)

    def fit(self, shadows: SignalMatrix) -> ShokriAttack:
        self.cfg.validate()
        if shadows.probs is None:
            raise InputError("Shokri's attack needs prediction vectors: compute_signals(..., keep_probs=True)")
        if not bool(shadows.member.any()) or bool(shadows.member.all()):
            raise ConfigError("Shokri's attack needs shadow signals with both IN and OUT records")
        rng = np.random.default_rng(self.cfg.seed)
        feats = shadows.probs
        for c in sorted(set(shadows.labels.tolist())):
            rows = shadows.labels == c
            f = feats[rows].reshape(-1, feats.shape[-1])
            lab = shadows.member[rows].reshape(-1).numpy()
            idx_in, idx_out = np.flatnonzero(lab), np.flatnonzero(~lab)
            if idx_in.size == 0 or idx_out.size == 0:
                self.constant[c] = 1.0 if idx_in.size else 0.0
                continue
            k = min(self.cfg.max_rows_per_class, idx_in.size, idx_out.size)
            pick = np.r_[rng.choice(idx_in, k, replace=False), rng.choice(idx_out, k, replace=False)]
            model = _make(self.cfg)
            with warnings.catch_warnings():  # the MLP's max_iter cap is a time bound, not an error
                warnings.simplefilter("ignore", category=UserWarning)
                model.fit(_features(f[pick], self.cfg.features), lab[pick])
            self.models[c] = model
        return self

    def score(self, target: SignalMatrix) -> torch.Tensor:
        """P(IN) per target example [N]."""
        if not self.models and not self.constant:
            raise ConfigError("call fit(shadow_signals) before score()")
        if target.m != 1 or target.probs is None:
            raise InputError("the target needs one model column with prediction vectors")
        out = torch.full((target.n,), 0.5, dtype=torch.float64)
        probs = target.probs[:, 0]
        for c in sorted(set(target.labels.tolist())):
            rows = torch.nonzero(target.labels == c).flatten()
            if c in self.models:
                p = self.models[c].predict_proba(_features(probs[rows], self.cfg.features))[:, 1]
                out[rows] = torch.from_numpy(np.asarray(p, dtype=np.float64))
            elif c in self.constant:
                out[rows] = self.constant[c]
        return out.float()


def shokri(target: SignalMatrix, shadows: SignalMatrix, cfg: ShokriConfig = ShokriConfig()) -> torch.Tensor:
    """Fit on `shadows`, score `target` (scores [N], higher = member)."""
    return ShokriAttack(cfg).fit(shadows).score(target)
