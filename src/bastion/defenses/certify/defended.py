"""Certified models as defended checkpoints, so every attack and the audit evaluate the
certified classifier itself rather than its bare network.

- `smoothing`: the Gaussian-smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)
  of Cohen, Rosenfeld and Kolter (2019) around any base model (best trained with
  `bastion train --defense gaussian-aug`; sigma defaults to the sigma it was trained with).
- `pixeldp`: the PixelDP network of Lecuyer et al. (2019), whose noise layer is part of
  the model at prediction time; only a checkpoint trained with `bastion train --defense
  pixeldp` qualifies, and its settings come from its training record.

Both are random classifiers: one forward pass is one noise draw. Gradient attacks must use
`adaptive()`, the expectation over the noise (EOT, Athalye et al. 2018), which is also
what `bastion attack` and the audit's `defense` section attack and score.

    bastion defend --model gauss.st --defense smoothing --params sigma=0.25 --out smoothed.st
    bastion attack --model smoothed.st --attack pgd --norm l2 --eps 0.5
"""

from __future__ import annotations

from typing import Any

from bastion.core import Classifier, ConfigError

KIND = "certified"
DEFAULT_EOT = 16  # noise draws per input of the attack surrogate
PARAMS = {"smoothing": ("sigma", "eot_samples", "batch_size"), "pixeldp": ("eot_samples",)}


def _count(params: dict[str, Any], key: str, lo: int, hi: int) -> None:
    v = params.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}")


def check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Range checks of a certified defense's parameters, without a model."""
    from bastion.defenses.certify.smoothing import check_sigma

    extra = sorted(set(params) - set(PARAMS[name]))
    if extra:
        raise ConfigError(f"{name}: unknown parameter(s) {', '.join(extra)}; valid: {', '.join(PARAMS[name])}")
    out = dict(params)
    if out.get("sigma") is not None:
        out["sigma"] = check_sigma(out["sigma"])
    _count(out, "eot_samples", 1, 10_000)
    _count(out, "batch_size", 1, 1_000_000)
    return out


def training_record(model: Classifier) -> dict[str, Any] | None:
    d = model.meta.get("defense")
    return d if isinstance(d, dict) else None


def make_certified(model: Classifier, name: str, params: dict[str, Any]) -> Classifier:
    """The certified classifier `name` around `model` (see the module docstring)."""
    params = check_params(name, params)
    eot = int(params.get("eot_samples") or DEFAULT_EOT)
    trained = training_record(model)
    if name == "smoothing":
        from bastion.defenses.certify.run import checkpoint_sigma
        from bastion.defenses.certify.smoothing import SmoothedClassifier

        sigma = params.get("sigma") or checkpoint_sigma(model) or 0.25
        out: Classifier = SmoothedClassifier(model, sigma, batch_size=int(params.get("batch_size") or 1000),
                                             eot_samples=eot)
        rec_params = {"sigma": float(sigma), "eot_samples": eot}
    else:
        if not (trained and trained.get("name") == "pixeldp"):
            raise ConfigError(f"defense 'pixeldp' needs a PixelDP network: {model.name} was not trained with "
                              "`bastion train --defense pixeldp` (for any other model use smoothing)")
        from bastion.defenses.certify.run import pixeldp_model

        out = pixeldp_model(model)
        out.eot_samples = eot  # type: ignore[attr-defined]
        rec_params = {"eot_samples": eot}
    out.meta["defended"] = {"kind": KIND, "name": name, "params": rec_params}
    return out


def is_certified(model: Classifier) -> bool:
    from bastion.defenses.certify.pixeldp import PixelDPClassifier
    from bastion.defenses.certify.smoothing import SmoothedClassifier

    return isinstance(model, (SmoothedClassifier, PixelDPClassifier))


def base_of(model: Classifier) -> Classifier:
    """The network whose weights a certified checkpoint stores."""
    from bastion.defenses.certify.smoothing import SmoothedClassifier

    if isinstance(model, SmoothedClassifier):
        return model.base
    return model._base  # type: ignore[attr-defined,no-any-return]


def attack_surrogate(model: Classifier) -> tuple[Classifier, str]:
    """What an evasion attack should attack and score for `model`: a certified (random)
    classifier's EOT over its noise, with a line saying so; the model itself and '' for any
    other. A PixelDP-trained network counts as certified even when it was not saved by
    `bastion defend`, since its noise layer is part of the model."""
    trained = training_record(model)
    if trained and trained.get("name") == "pixeldp" and not is_certified(model):
        model = make_certified(model, "pixeldp", {})
    if not is_certified(model):
        return model, ""
    k = model.eot_samples  # type: ignore[attr-defined]
    return model.adaptive(), f"{model.name} with its noise, through EOT over {k} noise draws (the expected prediction)"  # type: ignore[operator]
