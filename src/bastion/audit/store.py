"""The run folder: cached step results (resume), tensors, final results and report.

Layout of `runs/NAME/`:
    steps/<key>.json          one finished step each (written atomically)
    tensors/<key>.safetensors  sample images for the report
    results.json, report.html  written last, atomically; absent until a run completes
A step's key hashes its parameters and the model fingerprint, so a changed config or
model never reuses stale results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bastion.fileio import atomic_write


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class RunStore:
    def __init__(self, root: Path, model_fp: str) -> None:
        self.root = Path(root)
        self.model_fp = model_fp
        self.hits = 0
        self.misses = 0

    def _key(self, key: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
        return f"{safe}-{fingerprint([key, self.model_fp])}"

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        """Return the cached value of step `key`, or run `fn` and cache its JSON result."""
        path = self.root / "steps" / f"{self._key(key)}.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text())["value"]
                self.hits += 1
                return value
            except (json.JSONDecodeError, KeyError):
                path.unlink(missing_ok=True)
        value = fn()
        atomic_write(path, json.dumps({"key": key, "value": value}, default=str))
        self.misses += 1
        return value

    def save_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save as st_save
        data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        atomic_write(self.root / "tensors" / f"{self._key(key)}.safetensors", data)

    def load_tensors(self, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file
        path = self.root / "tensors" / f"{self._key(key)}.safetensors"
        return load_file(str(path)) if path.is_file() else None
