"""Cross-checks of the input transformations and feature squeezing against ART's
preprocessors (extra `crosscheck`), on the same inputs. Skipped when ART is absent.

- bit depth vs `FeatureSqueezing(bit_depth)`: equal;
- the k x k median vs `SpatialSmoothing(window_size=k)`: equal away from the border (ART
  pads by repeating the edge, SciPy's 'reflect'; Bastion mirrors without repeating it,
  torch's 'reflect'), on random images and on MNIST digits;
- JPEG vs `JpegCompression` (Pillow's libjpeg encoder and decoder): a fraction of one 8-bit
  level on average, a few levels at worst (libjpeg's integer DCT against Bastion's float one);
- Gaussian noise vs `GaussianAugmentation(augmentation=False)`: the same noise
  distribution (mean, standard deviation, clipping);
- the feature-squeezing detector's score against the same score assembled from ART's
  squeezers (bit depth and SciPy's 2 x 2 median) and the model's softmax.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.defenses.detect import FeatureSqueezing
from bastion.defenses.preprocess import JPEG, BitDepth, GaussianNoise, MedianFilter

pytestmark = pytest.mark.crosscheck
art_pre = pytest.importorskip("art.defences.preprocessor")


def _rand(n: int = 4, c: int = 1, size: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def _digits(mnist_test, n: int = 16) -> torch.Tensor:
    return mnist_test.x[:n].clone()


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_bit_depth_equals_art_feature_squeezing(bits):
    x = _rand()
    ref, _ = art_pre.FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=bits)(x.numpy())
    np.testing.assert_allclose(BitDepth(bits)(x).numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_median_equals_art_spatial_smoothing(k, mnist_test):
    smooth = art_pre.SpatialSmoothing(window_size=k, channels_first=True, clip_values=(0.0, 1.0))
    x = _rand(c=3)
    ref, _ = smooth(x.numpy())
    r = k // 2
    ours = MedianFilter(kernel=k)(x).numpy()
    np.testing.assert_allclose(ours[..., r:-r, r:-r], ref[..., r:-r, r:-r], atol=1e-6)
    d = _digits(mnist_test)
    ref_d, _ = smooth(d.numpy())
    np.testing.assert_allclose(MedianFilter(kernel=k)(d).numpy()[..., r:-r, r:-r], ref_d[..., r:-r, r:-r],
                               atol=1e-6)


@pytest.mark.parametrize("quality", [25, 75, 90])
def test_jpeg_agrees_with_art_jpeg_compression(quality, mnist_test):
    d = _digits(mnist_test)
    ref, _ = art_pre.JpegCompression(clip_values=(0.0, 1.0), quality=quality, channels_first=True)(d.numpy())
    ours = JPEG(quality=quality)(d).numpy()
    levels = np.abs(ours - ref) * 255
    # measured: mean 0.04-0.16 levels, 99th percentile 1-4, worst 6-12 (qualities 25-90)
    assert levels.mean() < 0.5, f"mean difference {levels.mean():.2f} levels"
    assert np.quantile(levels, 0.99) <= 4.0 and levels.max() <= 16.0
    # both are lossy in the same way: far from the input, close to each other
    assert np.abs(ours - d.numpy()).mean() > 3 * np.abs(ours - ref).mean()


def test_gaussian_noise_has_arts_distribution():
    x = torch.full((64, 1, 28, 28), 0.5)
    sigma = 0.1
    torch.manual_seed(0)
    ours = GaussianNoise(sigma=sigma)(x).numpy() - 0.5
    ref, _ = art_pre.GaussianAugmentation(sigma=sigma, augmentation=False, clip_values=(0.0, 1.0))(x.numpy())
    ref = ref - 0.5
    for sample in (ours, ref):
        assert abs(sample.mean()) < 0.002 and abs(sample.std() - sigma) < 0.002
    # the 5-sigma tails are clipped to the bounds by both
    x0 = torch.zeros(8, 1, 28, 28)
    assert float(GaussianNoise(sigma=sigma)(x0).min()) >= 0.0
    ref0, _ = art_pre.GaussianAugmentation(sigma=sigma, augmentation=False, clip_values=(0.0, 1.0))(x0.numpy())
    assert ref0.min() >= 0.0


def test_feature_squeezing_score_from_arts_squeezers(small_model, mnist_test):
    from scipy.ndimage import median_filter

    x = mnist_test.x[:32]
    fs = FeatureSqueezing(small_model)
    ours = fs.score(x).cpu().numpy()

    def softmax(a: np.ndarray) -> np.ndarray:
        return small_model.probs(torch.from_numpy(a).float()).cpu().numpy()

    p = softmax(x.numpy())
    bit, _ = art_pre.FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=1)(x.numpy())
    med = median_filter(x.numpy(), size=(1, 1, 2, 2), mode="reflect")
    ref = np.maximum(np.abs(p - softmax(bit)).sum(1), np.abs(p - softmax(med)).sum(1))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
