"""Shadow-model training throughput for membership inference (issue 6).

Workload (the issue's): cnn-small (~106k parameters) on 2,500 mnist-5k images (one
random half of the 5,000), 10 epochs, batch 32, Adam. Measured in one run:

- seconds per model-step one by one (loop) and with M models stacked + vmap (M = 8, 32),
  and their ratio;
- the path `method='auto'` picks on this device;
- the time for 256 shadow models, extrapolated from the measured per-model-step time of
  the faster path (790 steps per model), unless --full-models N trains N models end to end;
- scoring time: logit-scaled confidences of every model on all 5,000 images, measured on a
  few models and extrapolated to 256.

    .venv/bin/python benchmarks/membership.py [--steps 20] [--device cpu|cuda] [--full-models 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from bastion.attacks.privacy.membership import compute_signals
from bastion.core import InputSpec, resolve_device
from bastion.data import load
from bastion.training.shadow import (
    ShadowConfig,
    _build,
    _sync,
    _train_group,
    _train_one,
    model_indices,
    pick_method,
    train_shadows,
)

OUT = Path(__file__).resolve().parent / "results" / "membership.json"


def per_step(fn, steps: int, dev: torch.device) -> float:
    fn(2)  # warm-up
    _sync(dev)
    t = time.perf_counter()
    fn(steps)
    _sync(dev)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--groups", default="8,32")
    ap.add_argument("--full-models", type=int, default=0)
    ap.add_argument("--score-models", type=int, default=4)
    a = ap.parse_args()
    dev = resolve_device(a.device)
    d = load("mnist-5k", "all")
    x, y = d.x.to(dev), d.y.to(dev)
    cfg = ShadowConfig(arch="cnn-small", epochs=10, batch_size=32)
    spec = InputSpec((1, 28, 28))
    n_i = len(d) // 2
    steps_per_model = cfg.epochs * -(-n_i // cfg.batch_size)
    idx = model_indices(len(d), 0, cfg.seed).to(dev)
    m0 = _build(cfg, spec, 10, 0, dev)
    res: dict = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "machine": platform.machine(),
                 "params": sum(p.numel() for p in m0.parameters()), "steps_per_model": steps_per_model}
    s = a.steps
    loop_s = per_step(lambda k: _train_one(copy.deepcopy(m0), x, y, idx, 0, cfg, max_steps=k), s, dev) / s
    res["loop_s_per_model_step"] = loop_s
    for g in [int(v) for v in a.groups.split(",")]:
        models = [copy.deepcopy(m0) for _ in range(g)]
        t = per_step(lambda k, models=models, g=g: _train_group(models, x, y, [idx] * g, list(range(g)), cfg,
                                                                   max_steps=k), s, dev)
        res[f"vmap{g}_s_per_model_step"] = t / (s * g)
        res[f"vmap{g}_speedup_vs_loop"] = loop_s / (t / (s * g))
        print(f"M={g}: vmap {t / (s * g) * 1e3:.2f} ms/model-step, loop {loop_s * 1e3:.2f} ms -> "
              f"{res[f'vmap{g}_speedup_vs_loop']:.2f}x", flush=True)
    res["auto_pick"], res["auto_probe"] = pick_method(cfg, spec, 10, x, y, 8, dev)
    best = min(v for k, v in res.items() if k.endswith("_s_per_model_step"))
    res["per_model_s_extrapolated"] = best * steps_per_model
    res["shadows256_s_extrapolated"] = best * steps_per_model * 256
    res["loop_per_model_s_extrapolated"] = loop_s * steps_per_model
    if a.full_models:
        t = time.perf_counter()
        train_shadows(d.x, d.y, a.full_models, cfg, device=dev)
        res["full_models"] = a.full_models
        res["full_s_per_model"] = (time.perf_counter() - t) / a.full_models
    models = [_build(cfg, spec, 10, i, dev) for i in range(a.score_models)]
    t = time.perf_counter()
    compute_signals(models, d.x, d.y)
    _sync(dev)
    res["score_s_per_model_5000"] = (time.perf_counter() - t) / a.score_models
    res["score256_s_extrapolated"] = res["score_s_per_model_5000"] * 256
    res["load_avg_end"] = os.getloadavg()
    print(json.dumps(res, indent=2, default=str))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(OUT.read_text()) if OUT.exists() else {}
    runs[str(dev.type)] = res
    OUT.write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
