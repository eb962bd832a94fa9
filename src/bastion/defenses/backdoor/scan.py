"""One entry point for the backdoor scans, shared by `bastion scan` and the audit's
`backdoor` section: run a method on a model and return JSON-ready per-class figures, the
suspected target class and (Neural Cleanse) the reversed trigger images."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from bastion.core import Classifier, ConfigError, check_number, check_seed, unknown_name
from bastion.data.dataset import Dataset

METHODS = ("neural-cleanse", "activation-clustering", "spectral", "strip")


@dataclass(frozen=True)
class ScanSettings:
    """Settings of a scan.

    Attributes:
        method: one of METHODS.
        n_clean: clean inputs Neural Cleanse / STRIP use (from the test split).
        epochs: Neural Cleanse epochs (of 10 mini-batches).
        eps: spectral signatures' assumed poisoned share of a class.
        rounds: spectral signatures' removal steps (1 = Tran et al.'s one-shot removal;
            more re-estimate the direction on the kept examples after every step).
        frr: STRIP's false rejection rate on clean inputs.
        n_train: training inputs analysed by activation clustering / spectral (None = all).
        seed: seeds the optimisation and sampling.
    """

    method: str = "neural-cleanse"
    n_clean: int = 300
    epochs: int = 20
    eps: float = 0.1
    rounds: int = 1
    frr: float = 0.01
    n_train: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_name("scan method", self.method, METHODS)
        check_number(self.n_clean, "n_clean", low=2, high=1_000_000, integer=True)
        check_number(self.epochs, "epochs", low=1, high=100_000, integer=True)
        check_number(self.eps, "eps", low=0.0, high=1.0)
        check_number(self.rounds, "rounds", low=1, high=10_000, integer=True)
        check_number(self.frr, "frr", low=0.0, high=1.0)
        if self.n_train is not None:
            check_number(self.n_train, "n_train", low=2, high=10**8, integer=True)
        check_seed(self.seed)


def trigger_png(mask: torch.Tensor, pattern: torch.Tensor) -> bytes:
    """A reversed trigger (mask * pattern) as a grey or RGB PNG, scaled up 8x."""
    from PIL import Image

    img = (mask * pattern).clamp(0, 1)
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr[..., :3])
    pil = pil.resize((pil.width * 8, pil.height * 8), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def run_scan(clf: Classifier, train: Dataset, test: Dataset, s: ScanSettings) -> dict[str, Any]:
    """Run scan `s.method` on `clf`: Neural Cleanse and STRIP use clean test inputs;
    activation clustering and spectral signatures analyse the training set (its labels
    as given). Returns {'summary': ..., 'per_class': [...], 'pngs': {class: bytes}}."""
    s.validate()
    if tuple(test.input_shape) != tuple(clf.spec.shape):
        raise ConfigError(f"data has inputs of shape {test.input_shape}, the model expects {clf.spec.shape}")
    clean = test.take(s.n_clean)
    pngs: dict[int, bytes] = {}
    if s.method == "neural-cleanse":
        from bastion.defenses.backdoor.neural_cleanse import NeuralCleanseConfig, neural_cleanse

        r = neural_cleanse(clf, clean.x, NeuralCleanseConfig(epochs=s.epochs, seed=s.seed))
        per_class = [{"class": k, "l1": float(r.l1[i]), "trigger_success": float(r.success[i]),
                      "anomaly": float(r.anomaly[i]), "flagged": k in r.flagged} for i, k in enumerate(r.classes)]
        pngs = {k: trigger_png(r.masks[i], r.patterns[i]) for i, k in enumerate(r.classes)}
        summary = {**r.summary(), "suspected_target": r.suspected}
    elif s.method in ("activation-clustering", "spectral"):
        data = train.take(s.n_train)
        if s.method == "activation-clustering":
            from bastion.defenses.backdoor.activation_clustering import (
                ActivationClusteringConfig,
                activation_clustering,
            )

            out = activation_clustering(clf, data.x, data.y, ActivationClusteringConfig(seed=s.seed))
            per_class = out["per_class"]
            # the flagged class whose candidate cluster is most persistent (smallest failure ratio)
            suspected = min(out["flagged_classes"], key=lambda k: (per_class[k].get("failure_ratio", 0.0),
                                                                    -(per_class[k]["silhouette"] or 0.0))) \
                if out["flagged_classes"] else None
        else:
            from bastion.defenses.backdoor.spectral import spectral_signatures
            from bastion.metrics.poisoning import anomaly_index

            out = spectral_signatures(clf, data.x, data.y, eps=s.eps, rounds=s.rounds)
            per_class = out["per_class"]
            ratios = torch.tensor([p.get("score_ratio") or 0.0 for p in per_class])
            anom = anomaly_index(ratios)
            for p, a in zip(per_class, anom.tolist()):
                p["anomaly"] = a
            top = int(ratios.argmax())
            suspected = top if float(anom[top]) > 2 else None
            out.pop("scores", None)
        summary = {"method": s.method, "suspected_target": suspected, "n_analysed": len(data),
                   "n_flagged": len(out["flagged_index"]), "flagged_index": out["flagged_index"],
                   "config": out["config"]}
    else:
        from bastion.defenses.backdoor.strip import Strip

        half = max(1, len(clean) // 2)
        detector = Strip(clf, test.x[len(clean):] if len(test) > len(clean) else clean.x[half:],
                         frr=s.frr, seed=s.seed).fit(clean.x[:half])
        ent = detector.entropy(clean.x[half:]) if len(clean) > half else detector.clean_entropy
        pred = clf.predict(clean.x[half:]).cpu() if len(clean) > half else torch.empty(0, dtype=torch.long)
        per_class = []
        for k in range(clf.num_classes):
            sel = pred == k
            per_class.append({"class": k, "n": int(sel.sum()),
                              "mean_entropy": float(ent[sel].mean()) if bool(sel.any()) else None,
                              "flag_rate": float((ent[sel] < detector.threshold).float().mean())
                              if bool(sel.any()) else None})
        summary = {**detector.summary(), "suspected_target": None,
                   "note": "STRIP screens inputs at run time; use it on suspect inputs (Strip.flag)"}
    return {"summary": summary, "per_class": per_class, "pngs": pngs}
