"""What `bastion models` and `bastion datasets` list, as plain data (no torch import).

Listing the zoo and the data sets should answer at once; importing torch to read a few
names takes seconds. The model zoo and the data registry remain the source of truth: a
test checks that this catalog equals what they define.
"""

from __future__ import annotations

# zoo name -> {argument: default, as Python source}
MODELS: dict[str, dict[str, str]] = {
    "cnn-small": {"activation": "'relu'", "channels": "(16, 32)", "hidden": "64"},
    "cnn7": {"activation": "'relu'", "dropout": "0.0"},
    "lenet": {"activation": "'relu'", "variant": "'classic'", "pool": "'max'"},
    "mlp": {"hidden": "(256, 256)", "activation": "'relu'"},
    "resnet": {"depth": "20", "width": "1", "norm": "'batch'"},
}

# data set name -> embedded (ships with the installed packages; the others need --root)
DATASETS: dict[str, bool] = {
    "cifar10": False, "cifar100": False, "digits": True, "fashion-mnist": False, "imagefolder": False,
    "mnist": False, "mnist-5k": True, "npz": False,
}
