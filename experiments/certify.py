"""Certified robustness on mnist-5k: randomized smoothing curves for three sigmas (Cohen et
al. 2019), PixelDP accuracy / robust accuracy / robust precision versus the threshold T for
three construction bounds L (Lecuyer et al. 2019), IBP-trained versus standard verified
accuracy (Gowal et al. 2018; trained at 1.5x the verified eps), and one table that sets them beside PGD adversarial training:
clean accuracy, certified accuracy, empirical robust accuracy under PGD (EOT over the noise
for the randomized models), training time and certification time per input.

Sized for a 2-core machine: cnn-small, a few epochs, the first --n test images and
--samples estimation draws per input (Cohen et al. use 100,000; fewer draws cap the
largest certifiable radius at sigma * PhiInv(alpha^(1/n)) and lower every curve a little).

    OMP_NUM_THREADS=1 python experiments/certify.py --n 100 --samples 5000 --epochs 3

Writes docs/results/certify.json (and prints a summary).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.12, 0.25, 0.5)
L_BOUNDS = (0.1, 0.3, 1.0)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
IBP_EPS = (0.05, 0.1, 0.2)


def fresh(arch: str, spec: Any, seed: int = 0) -> Any:
    from bastion.models import build_classifier

    torch.manual_seed(seed)
    return build_classifier(arch, spec, 10, device="cpu")


def smoothing_part(args: Any, train: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    from bastion.defenses.certify import (
        GaussianAugmentation,
        SmoothedClassifier,
        gaussian_augmentation_fit,
    )
    from bastion.training import TrainConfig

    out = {}
    for sigma in SIGMAS:
        clf = fresh(args.arch, train.input_spec())
        res = gaussian_augmentation_fit(clf, train, None, GaussianAugmentation(sigma),
                                        TrainConfig(epochs=args.epochs, batch_size=64, progress=False))
        g = SmoothedClassifier(clf, sigma)
        cert = g.certify(x, n0=100, n=args.samples, alpha=0.001, seed=0)
        out[str(sigma)] = {"train_seconds": res.wall_time, "base_clean_accuracy": clf.accuracy(x, y),
                           "certified_accuracy": cert.certified_accuracy(y, list(RADII)),
                           "abstain_rate": float(cert.abstained.float().mean()),
                           "seconds_per_input": cert.wall_time / len(y), "_model": clf, "_cert": cert}
        print(f"smoothing sigma {sigma}: {out[str(sigma)]['certified_accuracy']}", flush=True)
    return out


def pixeldp_part(args: Any, train: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    from bastion.defenses.certify.pixeldp import PixelDPClassifier, PixelDPConfig, pixeldp_fit
    from bastion.training import TrainConfig

    out = {}
    for bound in L_BOUNDS:
        pdp = PixelDPClassifier(fresh(args.arch, train.input_spec()), PixelDPConfig(construction_bound=bound))
        res = pixeldp_fit(pdp, train, None, TrainConfig(epochs=args.epochs, batch_size=64, progress=False))
        cert = pdp.certify(x, draws=args.draws, eta=0.05, seed=0)
        curves = cert.curves(y, list(THRESHOLDS))
        out[str(bound)] = {"noise_scale": pdp.noise.scale, "train_seconds": res.wall_time, **curves,
                           "seconds_per_input": cert.wall_time / len(y), "_model": pdp, "_cert": cert}
        print(f"pixeldp L {bound}: acc {curves['accuracy'][0]:.3f} robust {curves['robust_accuracy']}", flush=True)
    return out


def ibp_part(args: Any, train: Any, test: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    from bastion.defenses.certify import IBPTraining, ibp_fit, verify
    from bastion.training import TrainConfig, fit

    out = {}
    std = fresh(args.arch, train.input_spec())
    t0 = time.perf_counter()
    fit(std, train, None, TrainConfig(epochs=args.epochs, batch_size=64, progress=False))
    std_train = time.perf_counter() - t0
    ibp = fresh(args.arch, train.input_spec())
    res = ibp_fit(ibp, train, None, IBPTraining(eps=min(1.0, 1.5 * args.ibp_eps), warmup_epochs=0.5,
                                                  ramp_epochs=max(1, args.ibp_epochs - 2)),
                  TrainConfig(epochs=args.ibp_epochs, batch_size=64, progress=False))
    for label, clf, tsec in (("standard", std, std_train), ("ibp", ibp, res.wall_time)):
        rows = []
        for eps in IBP_EPS:
            for method in ("ibp", "crown-ibp"):
                v = verify(clf, x, y, eps, method)
                rows.append({"eps": eps, "method": method, "verified_accuracy": v.verified_accuracy,
                             "seconds_per_input": v.wall_time / len(y)})
        out[label] = {"clean_accuracy": clf.accuracy(test.x, test.y), "train_seconds": tsec, "verified": rows,
                      "_model": clf}
        print(f"{label}: {rows}", flush=True)
    return out


def pgd_robust(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> float:
    from bastion.attacks.evasion import PGD

    return PGD(eps=eps, norm=norm, steps=40, seed=0)(model, x, y).robust_accuracy


def smoothed_under_attack(g: Any, x: torch.Tensor, y: torch.Tensor, eps: float, samples: int) -> float:
    """Empirical robust accuracy of the smoothed classifier: PGD-L2 with EOT (16 draws)
    against the noise, scored by PREDICT (n = samples, alpha 0.001; abstain = wrong)."""
    from bastion.attacks.evasion import PGD

    adv = PGD(eps=eps, norm="l2", steps=20, seed=0)(g.adaptive(16), x, y).x_adv
    pred = g.predict_smoothed(adv, n=samples, alpha=0.001, seed=5)
    return float((pred == y).float().mean())


def comparison(args: Any, train: Any, test: Any, x: torch.Tensor, y: torch.Tensor, smooth: dict[str, Any],
               pdp: dict[str, Any], ibp: dict[str, Any]) -> list[dict[str, Any]]:
    from bastion.defenses.certify import SmoothedClassifier, verify
    from bastion.training import PGDTraining, TrainConfig, adversarial_fit

    m = args.attack_n
    xa, ya = x[:m], y[:m]
    at = fresh(args.arch, train.input_spec())
    res = adversarial_fit(at, train, None, PGDTraining(eps=args.ibp_eps, steps=7),
                          TrainConfig(epochs=args.epochs, batch_size=64, progress=False))
    rows = []
    v_at = verify(at, x, y, args.ibp_eps, "crown-ibp")
    rows.append({"model": f"PGD-AT (Linf {args.ibp_eps})", "clean_accuracy": at.accuracy(x, y),
                 "certified": f"crown-ibp Linf {args.ibp_eps}: {v_at.verified_accuracy:.3f}",
                 "empirical": f"PGD-40 Linf {args.ibp_eps}: {pgd_robust(at, xa, ya, args.ibp_eps, 'linf'):.3f}",
                 "train_seconds": res.wall_time, "certify_seconds_per_input": v_at.wall_time / len(y)})
    ib = ibp["ibp"]["_model"]
    v_ib = verify(ib, x, y, args.ibp_eps, "crown-ibp")
    rows.append({"model": f"IBP-trained (Linf {args.ibp_eps})", "clean_accuracy": ib.accuracy(x, y),
                 "certified": f"crown-ibp Linf {args.ibp_eps}: {v_ib.verified_accuracy:.3f}",
                 "empirical": f"PGD-40 Linf {args.ibp_eps}: {pgd_robust(ib, xa, ya, args.ibp_eps, 'linf'):.3f}",
                 "train_seconds": ibp["ibp"]["train_seconds"],
                 "certify_seconds_per_input": v_ib.wall_time / len(y)})
    s = smooth["0.25"]
    g = SmoothedClassifier(s["_model"], 0.25)
    rows.append({"model": "Gaussian aug. + smoothing (sigma 0.25)",
                 "clean_accuracy": s["certified_accuracy"][0.0],
                 "certified": f"smoothing L2 0.5: {s['certified_accuracy'][0.5]:.3f}",
                 "empirical": f"PGD-L2/EOT 0.5: {smoothed_under_attack(g, xa, ya, 0.5, 1000):.3f}",
                 "train_seconds": s["train_seconds"], "certify_seconds_per_input": s["seconds_per_input"]})
    p = pdp["0.3"]
    model = p["_model"]
    from bastion.attacks.evasion import PGD
    adv = PGD(eps=0.3, norm="l2", steps=20, seed=0)(model.adaptive(16), xa, ya).x_adv
    after = model.certify(adv, draws=args.draws, seed=7)
    rows.append({"model": "PixelDP (L = 0.3, noise after the image)", "clean_accuracy": p["accuracy"][0],
                 "certified": f"PixelDP T 0.3: {p['robust_accuracy'][THRESHOLDS.index(0.3)]:.3f}",
                 "empirical": f"PGD-L2/EOT 0.3: {float((after.label == ya).float().mean()):.3f}",
                 "train_seconds": p["train_seconds"], "certify_seconds_per_input": p["seconds_per_input"]})
    for r in rows:
        print(r, flush=True)
    return rows


def strip(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): strip(v) for k, v in d.items() if not str(k).startswith("_")}
    if isinstance(d, list):
        return [strip(v) for v in d]
    return d


def main() -> None:
    from bastion.data import load

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--attack-n", type=int, default=50)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ibp-epochs", type=int, default=5)
    ap.add_argument("--ibp-eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "certify.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    x, y = test.x[:args.n], test.y[:args.n]
    start = time.perf_counter()
    smooth = smoothing_part(args, train, x, y)
    pdp = pixeldp_part(args, train, x, y)
    ibp = ibp_part(args, train, test, x, y)
    table = comparison(args, train, test, x, y, smooth, pdp, ibp)
    result = {"settings": vars(args), "smoothing": strip(smooth), "pixeldp": strip(pdp), "ibp": strip(ibp),
              "comparison": table, "wall_seconds": time.perf_counter() - start, "torch": torch.__version__,
              "platform": platform.platform()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
