"""Input transformations as defenses: each a `Transform` (frozen config, batched torch map,
declared `differentiable` / `random`), wrapped around a model by `Preprocessed`, whose
`adaptive()` surrogate (BPDA / EOT) is what gradient attacks should target.

    from bastion.defenses.preprocess import Preprocessed, get_transform
    defended = Preprocessed(model, get_transform("bit-depth", bits=1))
    result = PGD(eps=0.3)(defended.adaptive(), x, y)
    robust = defended.accuracy(result.x_adv, y)
"""

from bastion.defenses.preprocess.base import TRANSFORMS, Transform, build, get_transform
from bastion.defenses.preprocess.chain import Chain
from bastion.defenses.preprocess.jpeg import JPEG
from bastion.defenses.preprocess.nlm import NonLocalMeans
from bastion.defenses.preprocess.noise import GaussianNoise
from bastion.defenses.preprocess.quantize import BitDepth
from bastion.defenses.preprocess.rotation import Rotation
from bastion.defenses.preprocess.smoothing import GaussianBlur, MeanFilter, MedianFilter
from bastion.defenses.preprocess.tv import TVMinimization
from bastion.defenses.preprocess.wrapper import (
    DEFAULT_EOT_SAMPLES,
    GradientMaskingWarning,
    Preprocessed,
    adaptive,
)

__all__ = ["DEFAULT_EOT_SAMPLES", "JPEG", "TRANSFORMS", "BitDepth", "Chain", "GaussianBlur",
           "GaussianNoise", "GradientMaskingWarning", "MeanFilter", "MedianFilter",
           "NonLocalMeans", "Preprocessed", "Rotation", "TVMinimization", "Transform",
           "adaptive", "build", "get_transform"]
