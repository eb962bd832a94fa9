"""Unlearning with more defender data on the cached BadNets cnn7 of poisoning_central.py:
Neural Cleanse (10 epochs), then unlearning with 2,000 clean training images at two
learning rates. Writes docs/results/poisoning_central_unlearning.json.

    PYTHONPATH=src python experiments/poisoning_central_unlearning.py
"""
import copy
import json
from pathlib import Path

import torch

from bastion.attacks.poisoning import Trigger
from bastion.data import load
from bastion.defenses.backdoor import NeuralCleanseConfig, UnlearnConfig, neural_cleanse, unlearn
from bastion.metrics.poisoning import attack_success_rate
from bastion.models import load_classifier

tr, te = load("mnist-5k","train"), load("mnist-5k","test")
CACHED = max(Path(".cache/poisoning-central").glob("cnn7-badnets5-*.st"), key=lambda p: p.stat().st_mtime)
m = load_classifier(CACHED, device="cpu")
trig = Trigger(kind="square", size=4)
nc = neural_cleanse(m, te.x[:300], NeuralCleanseConfig(epochs=10), progress=False)
mask, pat = nc.trigger(nc.smallest)
out = {"class_used": nc.smallest}
for n_def, lr, ep in ((2000, 1e-4, 2), (2000, 2e-4, 1)):
    d = tr.subset(torch.randperm(len(tr), generator=torch.Generator().manual_seed(1))[:n_def])
    mm = copy.deepcopy(m)
    unlearn(mm, d, mask, pat, UnlearnConfig(lr=lr, epochs=ep))
    r = {"defender_clean_examples": n_def, "lr": lr, "epochs": ep, "clean_accuracy": mm.accuracy(te.x, te.y), "asr": attack_success_rate(mm, te.x, te.y, trig, 0)}
    out[f"n{n_def}_lr{lr}_ep{ep}"] = r
    print(r, flush=True)
Path("docs/results/poisoning_central_unlearning.json").write_text(json.dumps(out, indent=2))
