"""Defended models as checkpoints: a base model plus its input transformation or its
calibrated detector, stored in one Bastion checkpoint that loads back as the defended
`Classifier` (`Preprocessed` or `Detected`) wherever a checkpoint is accepted.

The checkpoint holds the base model's weights and metadata as usual, and a `defended`
metadata record:

- a transformation (`bastion.defenses.preprocess`): its name, parameters and the number
  of EOT draws of its adaptive surrogate;
- a detector (`bastion.defenses.detect`): its name, parameters, the calibrated threshold
  and the calibration facts; a binary detector's network weights are stored as extra
  tensors named `defense.detector.*` next to the base weights;
- a certified classifier (`bastion.defenses.certify.defended`): randomized smoothing or a
  PixelDP network, with the noise and the attack surrogate's draws.

    from bastion.defenses.saved import make_defense, save_defended
    defended = make_defense(model, "feature-squeezing", {"fpr": 0.05}, train_set)
    save_defended("defended.st", defended)
    load_classifier("defended.st")      # -> Detected(model, FeatureSqueezing), calibrated
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from bastion.core import CheckpointError, Classifier, ConfigError, require
from bastion.data.dataset import Dataset
from bastion.params import build

PREPROCESS, DETECTOR, CERTIFIED = "preprocess", "detector", "certified"
ENSEMBLE_KINDS = ("ensemble", "xensemble")  # bastion.defenses.ensemble.defense
CERTIFIED_NAMES = ("smoothing", "pixeldp")  # bastion.defenses.certify.defended
TENSOR_PREFIX = "defense."
DETECTOR_PREFIX = "defense.detector."
DEFAULT_CALIBRATION = 1000  # benign inputs the threshold is calibrated on
DEFAULT_DETECTOR_FIT = 2000  # clean training inputs a binary detector learns from

# Short parameter names accepted on the command line, mapped to the transform's own field.
ALIASES = {"k": "kernel", "k_bits": "bits", "kbits": "bits", "q": "quality"}


def defense_names() -> dict[str, str]:
    """Every name `make_defense` accepts, with its kind ('preprocess' or 'detector')."""
    from bastion.defenses.detect.registry import ALIASES as DET_ALIASES
    from bastion.defenses.detect.registry import DETECTORS
    from bastion.defenses.ensemble.defense import KINDS
    from bastion.defenses.preprocess import TRANSFORMS

    out = {n: PREPROCESS for n in TRANSFORMS}
    out.update({n: DETECTOR for n in (*DETECTORS, *DET_ALIASES)})
    out.update({n: n for n in KINDS})  # diversity ensembles: kind = name
    out.update({n: CERTIFIED for n in CERTIFIED_NAMES})
    return out


def kind_of(name: str) -> str:
    """'preprocess' or 'detector' for a defense name; unknown names list the valid ones."""
    from bastion.core import unknown_name
    from bastion.defenses.detect.registry import DETECTORS
    from bastion.defenses.preprocess import TRANSFORMS

    kind = defense_names().get(str(name).lower())
    if kind is None:
        raise unknown_name("defense", str(name), [*TRANSFORMS, *DETECTORS, "ensemble", "xensemble",
                                                  *CERTIFIED_NAMES])
    return kind


def canonical_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` with short names (k=3 for a median's kernel, ...) replaced by the field
    names of the transform."""
    from bastion.defenses.preprocess import TRANSFORMS

    cls = TRANSFORMS.get(str(name).lower())
    if cls is None:
        return dict(params)
    valid = {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = ALIASES.get(k, k) if k not in valid else k
        if key in out:
            raise ConfigError(f"{name}: parameter {key} given twice (as {k} and {key})")
        out[key] = v
    return out


def _detector_name(name: str) -> str:
    from bastion.defenses.detect.registry import ALIASES as DET_ALIASES

    key = str(name).lower()
    return DET_ALIASES.get(key, key)


def check_defense(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate a defense by name and parameters without any model or data (every range
    check of the transform or detector config runs here). Returns the record
    {'kind', 'name', 'params'} that `make_defense` takes."""
    params = dict(params or {})
    kind = kind_of(name)
    if kind == CERTIFIED:
        from bastion.defenses.certify.defended import check_params

        key = str(name).lower()
        return {"kind": kind, "name": key, "params": check_params(key, params)}
    if kind in ENSEMBLE_KINDS:
        from bastion.defenses.ensemble.defense import check_params

        check_params(kind, params)
        return {"kind": kind, "name": kind, "params": params}
    if kind == PREPROCESS:
        from bastion.defenses.preprocess import get_transform

        params = canonical_params(name, params)
        t = get_transform(name, **params)
        return {"kind": kind, "name": t.name, "params": params}
    from bastion.defenses.detect.registry import DETECTORS

    key = _detector_name(name)
    cfg_cls = DETECTORS[key][1]
    cfg = build(cfg_cls, params, f"detector {key!r}")
    if key == "binary":
        from bastion.attacks import registry

        registry.create(cfg.attack, **cfg.attack_params)
    return {"kind": kind, "name": key, "params": params}


def calibration_split(train: Dataset, calib_n: int = DEFAULT_CALIBRATION,
                      fit_n: int = DEFAULT_DETECTOR_FIT, needs_fit: bool = False
                      ) -> tuple[Dataset | None, Dataset]:
    """(fit, calibration) parts of the training split: the calibration inputs are the last
    `calib_n` training inputs; a binary detector learns from the first `fit_n` of the rest,
    so its threshold is set on inputs it never saw."""
    n = len(train)
    calib_n = min(calib_n, n // 2 if needs_fit else n)
    calib = train.subset(torch.arange(n - calib_n, n))
    fit = train.subset(torch.arange(0, min(fit_n, n - calib_n))) if needs_fit else None
    return fit, calib


def make_defense(model: Classifier, name: str, params: dict[str, Any] | None = None,
                 train: Dataset | None = None, *, calib_n: int = DEFAULT_CALIBRATION,
                 fit_n: int = DEFAULT_DETECTOR_FIT, eot_samples: int | None = None,
                 seed: int = 0) -> Classifier:
    """The defended model: `Preprocessed(model, transform)` for a transformation, or
    `Detected(model, detector)` for a detector, whose threshold is calibrated on benign
    inputs of `train` (the last `calib_n`; a binary detector is first trained on the first
    `fit_n`) at the detector's false-positive rate. The L1 rule (Wei et al. 2020) keeps its
    fixed, attack-independent bound unless `fpr` is given."""
    rec = check_defense(name, params)
    if is_defended(model):
        raise ConfigError(f"{model.name} is already a defended model; defend its base model instead")
    if rec["kind"] in ENSEMBLE_KINDS:
        from bastion.defenses.ensemble.defense import DEFAULT_VALIDATION, make

        if train is None:
            raise ConfigError(f"defense {rec['name']!r} needs benign training inputs to choose its team and denoisers")
        _, calib = calibration_split(train, min(calib_n, DEFAULT_VALIDATION))
        torch.manual_seed(seed)
        return make(model, rec["kind"], rec["params"], calib.x, calib.y)
    if rec["kind"] == CERTIFIED:
        from bastion.defenses.certify.defended import make_certified

        given = {"eot_samples": eot_samples} if eot_samples else {}
        return make_certified(model, rec["name"], {**given, **rec["params"]})
    if rec["kind"] == PREPROCESS:
        from bastion.defenses.preprocess import DEFAULT_EOT_SAMPLES, Preprocessed, get_transform

        t = get_transform(rec["name"], **rec["params"])
        out = Preprocessed(model, t, eot_samples=eot_samples or DEFAULT_EOT_SAMPLES)
        out.meta["defended"] = _jsonable(rec)
        return out
    from bastion.defenses.detect import Detected, build_detector

    if train is None:
        raise ConfigError(f"detector {rec['name']!r} needs benign training inputs to calibrate its threshold")
    det = build_detector(rec["name"], model, **rec["params"])
    is_binary = rec["name"] == "binary"
    fit, calib = calibration_split(train, calib_n, fit_n, needs_fit=is_binary)
    need = math.ceil(1.0 / det.fpr)
    require(len(calib) >= need, f"calibrating {rec['name']} at fpr {det.fpr:g} needs at least {need} benign "
                                f"inputs; the training split has {len(calib)} to spare")
    torch.manual_seed(seed)
    if is_binary:
        assert fit is not None
        det.fit(fit.x, fit.y)  # type: ignore[attr-defined]
    if det.threshold is None or "fpr" in rec["params"]:
        det.calibrate(calib.x)  # the L1 rule keeps its fixed bound unless an fpr is asked for
    out = Detected(model, det)
    out._given_params = dict(rec["params"])  # type: ignore[attr-defined]
    return out


def _defended_types() -> tuple[type, ...]:
    from bastion.defenses.certify.smoothing import SmoothedClassifier
    from bastion.defenses.detect import Detected
    from bastion.defenses.preprocess import Preprocessed

    return (Preprocessed, Detected, SmoothedClassifier)


def defended_record(defended: Classifier) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The `defended` metadata record and the extra tensors of a defended model."""
    from bastion.defenses.certify.defended import is_certified
    from bastion.defenses.detect import Detected
    from bastion.defenses.ensemble.defense import is_ensemble_defense
    from bastion.defenses.preprocess import Preprocessed

    if is_ensemble_defense(defended) or (is_certified(defended) and "defended" in defended.meta):
        return _jsonable(defended.meta["defended"]), {}
    if isinstance(defended, Preprocessed):
        t = defended.transform
        params = defended.meta.get("defended", {}).get("params") if defended.meta.get("defended") else None
        if params is None:
            params = {k: v for k, v in t.params().items()} if t.name != "chain" else None
        if params is None:
            raise ConfigError("a chain of transforms is stored from its configuration; build it with "
                              "make_defense(model, 'chain', {'transforms': [...]})")
        return {"kind": PREPROCESS, "name": t.name, "params": _jsonable(params),
                "eot_samples": defended.eot_samples, "differentiable": t.differentiable,
                "random": t.random}, {}
    if isinstance(defended, Detected):
        det = defended.detector
        given = getattr(defended, "_given_params", None)
        rec = {"kind": DETECTOR, "name": det.name, "params": _jsonable(given if given is not None
                                                                        else _config_params(det)),
               "fpr": det.fpr, "threshold": det.threshold, "calibration": _jsonable(det.calibration)}
        tensors: dict[str, torch.Tensor] = {}
        net = getattr(det, "net", None)
        if net is not None:
            tensors = {DETECTOR_PREFIX + k: v for k, v in net.module.state_dict().items()}
        return rec, tensors
    raise ConfigError(f"{type(defended).__name__} is not a defended model (Preprocessed, Detected, an "
                      "ensemble or a certified classifier)")


def _config_params(det: Any) -> dict[str, Any]:
    cfg = getattr(det, "config", None)
    if cfg is None:
        return {}
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("squeezers", "denoisers") and v is not None:
            from bastion.defenses.preprocess.base import Transform

            v = [{"name": t.name, **t.params()} if isinstance(t, Transform) else t for t in v]
        out[f.name] = v
    return out


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def save_defended(path: str | Path, defended: Classifier, **meta: Any) -> Path:
    """Write `defended` (a `Preprocessed` or `Detected` model) as one checkpoint: the base
    model's weights and metadata, the `defended` record and any detector weights."""
    from bastion.models.checkpoint import save_classifier

    rec, tensors = defended_record(defended)
    base = base_model(defended)
    assert isinstance(base, Classifier)
    return save_classifier(path, base, defended=rec, extra_tensors=tensors, **meta)


def wrap_defended(clf: Classifier, record: Any, tensors: dict[str, torch.Tensor],
                  path: str | Path = "checkpoint") -> Classifier:
    """Rebuild the defended model a checkpoint records around its loaded base model."""
    if isinstance(record, dict) and record.get("kind") in ENSEMBLE_KINDS and isinstance(record.get("params"), dict):
        from bastion.defenses.ensemble.defense import make

        try:
            return make(clf, record["kind"], record["params"], None, None, record)  # type: ignore[arg-type]
        except (ConfigError, RuntimeError, TypeError, ValueError, KeyError, IndexError) as e:
            raise CheckpointError(f"{path}: the recorded {record['kind']} defense cannot be rebuilt ({e})"[:400]) from None
    if isinstance(record, dict) and record.get("kind") == CERTIFIED and isinstance(record.get("params", {}), dict):
        from bastion.defenses.certify.defended import make_certified

        if record.get("name") not in CERTIFIED_NAMES:
            raise CheckpointError(f"{path}: unknown certified defense {record.get('name')!r}; "
                                  f"valid: {', '.join(CERTIFIED_NAMES)}")
        try:
            return make_certified(clf, record["name"], dict(record.get("params", {})))
        except ConfigError as e:
            raise CheckpointError(f"{path}: the recorded {record['name']} defense cannot be rebuilt ({e})"[:400]) from None
    if not isinstance(record, dict) or record.get("kind") not in (PREPROCESS, DETECTOR) or not isinstance(
            record.get("name"), str) or not isinstance(record.get("params", {}), dict):
        raise CheckpointError(f"{path}: metadata 'defended' must be an object with kind preprocess or "
                              f"detector, a name and params, got {record!r}"[:300])
    try:
        if record["kind"] == PREPROCESS:
            from bastion.defenses.preprocess import DEFAULT_EOT_SAMPLES, Preprocessed, get_transform

            k = record.get("eot_samples", DEFAULT_EOT_SAMPLES)
            out = Preprocessed(clf, get_transform(record["name"], **record.get("params", {})),
                               eot_samples=k if isinstance(k, int) else DEFAULT_EOT_SAMPLES)
            out.meta["defended"] = record
            return out
        from bastion.defenses.detect import Detected, build_detector

        det = build_detector(record["name"], clf, **record.get("params", {}))
        thr = record.get("threshold")
        require(isinstance(thr, (int, float)) and not isinstance(thr, bool) and math.isfinite(thr),
                f"detector threshold must be a finite number, got {thr!r}")
        det.threshold = float(thr)
        det.calibration = dict(record.get("calibration") or {})
        net = getattr(det, "net", None)
        if net is not None:
            state = {k[len(DETECTOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(DETECTOR_PREFIX)}
            require(bool(state), "the binary detector's weights (defense.detector.*) are missing")
            net.module.load_state_dict(state, strict=True)
            net.to(clf.device).eval()
            for p in net.parameters():
                p.requires_grad_(False)
            det.trained = True  # type: ignore[attr-defined]
        out = Detected(clf, det)
        out._given_params = dict(record.get("params", {}))  # type: ignore[attr-defined]
        out.meta["defended"] = record
        return out
    except CheckpointError:
        raise
    except (ConfigError, RuntimeError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: the recorded defense cannot be rebuilt ({e})"[:400]) from None


def base_model(model: Classifier) -> Classifier:
    """The undefended model inside a defended one (the model itself otherwise)."""
    base = getattr(model, "_base", None)  # an ensemble defense keeps its protected model here
    if isinstance(base, Classifier):
        return base
    return model.module if isinstance(model, _defended_types()) else model  # type: ignore[return-value]


def is_defended(model: Classifier) -> bool:
    from bastion.defenses.certify.defended import is_certified
    from bastion.defenses.ensemble.defense import is_ensemble_defense

    return isinstance(model, _defended_types()) or is_ensemble_defense(model) or is_certified(model)
