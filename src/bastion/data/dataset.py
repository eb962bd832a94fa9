"""The small in-memory dataset object every loader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from bastion.core import DataError, InputSpec
from bastion.data.limits import check_dataset_values


@dataclass
class Dataset:
    """Images (or feature vectors) as float32 in [0, 1], integer labels and metadata.

    Construction refuses NaN or infinite inputs, inputs outside [0, 1], and labels outside
    0..num_classes-1 (num_classes <= limits.MAX_CLASSES) with a DataError.

    Attributes:
        x: float32 tensor [N, C, H, W] (or [N, D]) with values in [0, 1].
        y: int64 tensor [N].
        num_classes: number of classes.
        class_names: one name per class.
        name: registry name, e.g. 'mnist-5k'; split: 'train', 'test' or 'all'.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    split: str = "all"

    def __post_init__(self) -> None:
        if self.x.dim() < 2 or self.y.dim() != 1:
            raise DataError(f"{self.name}: inputs must be [N, ...] and labels [N], got shapes "
                            f"{tuple(self.x.shape)} and {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels")
        if not self.x.is_floating_point():
            raise DataError(f"{self.name}: inputs must be floating point in [0, 1]")
        check_dataset_values(self.x, self.y, self.num_classes, self.name or "data set")
        self.y = self.y.long()
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Sequence[int] | torch.Tensor) -> Dataset:
        idx = torch.as_tensor(index, dtype=torch.long)
        return Dataset(self.x[idx], self.y[idx], self.num_classes, list(self.class_names),
                       self.name, self.split)

    def take(self, n: int | None) -> Dataset:
        return self if n is None or n >= len(self) else self.subset(torch.arange(n))

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std (for image data [N, C, H, W]; one value for flat data),
        used as the normalisation inside a Classifier."""
        x = self.x.float()
        dims = [0, *range(2, x.dim())] if x.dim() > 2 else list(range(x.dim()))
        mean = x.mean(dim=dims).flatten().tolist()
        std = x.std(dim=dims).clamp_min(1e-6).flatten().tolist()
        return tuple(mean), tuple(std)

    def input_spec(self, normalize: bool = True) -> InputSpec:
        """An InputSpec for models trained on this data: bounds [0, 1] and, by default,
        per-channel normalisation from this data's statistics (applied inside the model)."""
        if not normalize or self.x.dim() <= 2:
            return InputSpec(self.input_shape)
        mean, std = self.channel_stats()
        return InputSpec(self.input_shape, mean=mean, std=std)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y, minlength=self.num_classes).tolist()
