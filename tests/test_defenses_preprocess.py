"""Input-transformation defenses: the transform contract (shape, dtype, device, bounds,
declared differentiability and randomness), known values, parameter validation, the
Preprocessed classifier, and the obfuscated-gradients lesson (Athalye et al. 2018):
a masking transform that looks robust under plain PGD falls under PGD through BPDA."""

from __future__ import annotations

import warnings

import pytest
import torch

from bastion.attacks.evasion import EOT, PGD
from bastion.attacks.evasion.adaptive import BPDA
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.defenses import Preprocessed as LazyPreprocessed
from bastion.defenses.preprocess import (
    JPEG,
    TRANSFORMS,
    BitDepth,
    Chain,
    GaussianBlur,
    GaussianNoise,
    GradientMaskingWarning,
    MeanFilter,
    MedianFilter,
    NonLocalMeans,
    Preprocessed,
    Rotation,
    TVMinimization,
    adaptive,
    get_transform,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = [BitDepth(), BitDepth(4), MedianFilter(), MeanFilter(), GaussianBlur(), Rotation(),
       Rotation(randomize=True), NonLocalMeans(), JPEG(), JPEG(10), GaussianNoise(),
       TVMinimization(), Chain((BitDepth(4), MedianFilter(3)))]
IDS = [repr(t) for t in ALL]


def _images(n: int = 4, c: int = 1, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


def test_registry_covers_every_transform() -> None:
    assert set(TRANSFORMS) == {"bit-depth", "median", "mean", "gaussian-blur", "rotation", "nlm",
                               "jpeg", "gaussian-noise", "tv", "chain"}
    assert get_transform("median", kernel=5) == MedianFilter(5)


@pytest.mark.parametrize("t", ALL, ids=IDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_keeps_shape_dtype_device_and_bounds(t, channels: int) -> None:
    x = _images(c=channels)
    for bounds in ((0.0, 1.0), (-1.0, 2.0)):
        xb = x * (bounds[1] - bounds[0]) + bounds[0]
        out = t(xb, bounds)
        assert out.shape == xb.shape and out.dtype == xb.dtype and out.device == xb.device
        assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("t", ALL, ids=IDS)
def test_randomness_declared_matches_behaviour(t) -> None:
    x = _images()
    differ = not torch.equal(t(x), t(x))
    assert differ == t.random


@pytest.mark.parametrize("t", ALL, ids=IDS)
def test_differentiability_declared_matches_gradients(t) -> None:
    x = _images(seed=3).requires_grad_(True)
    out = t(x)
    if not out.requires_grad:
        grad = None
    else:
        (grad,) = torch.autograd.grad((out * torch.linspace(0, 1, out.numel()).view_as(out)).sum(),
                                      x, allow_unused=True)
    nonzero = grad is not None and bool(grad.abs().sum() > 0)
    assert nonzero == t.differentiable
    # the BPDA approximation always carries a non-zero gradient
    (g2,) = torch.autograd.grad(t.approximation(x).sum(), x)
    assert float(g2.abs().sum()) > 0


def test_bit_depth_known_values_and_idempotence() -> None:
    x = torch.tensor([0.3, 0.7, 0.0, 1.0, 0.49, 0.51]).view(1, 1, 2, 3)
    assert BitDepth(1)(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert torch.allclose(BitDepth(2)(torch.tensor([0.3, 0.7]).view(1, 2)),
                          torch.tensor([1 / 3, 2 / 3]).view(1, 2))
    x = _images(seed=5)
    for bits in range(1, 9):
        t = BitDepth(bits)
        once = t(x)
        assert torch.equal(t(once), once)
        assert len(torch.unique(once)) <= 2 ** bits
    y = BitDepth(1)(x * 3 - 1, (-1.0, 2.0))  # other bounds: levels are the bounds
    assert set(torch.unique(y).tolist()) <= {-1.0, 2.0}


def test_median_removes_salt_and_pepper_and_keeps_constants() -> None:
    clean = torch.full((1, 1, 9, 9), 0.4)
    assert torch.equal(MedianFilter(3)(clean), clean)
    assert torch.equal(MedianFilter(5)(clean), clean)
    noisy = clean.clone()
    noisy[0, 0, 2, 3] = 1.0
    noisy[0, 0, 6, 6] = 0.0
    noisy[0, 0, 0, 0] = 1.0  # a corner: reflect padding must handle it
    assert torch.equal(MedianFilter(3)(noisy), clean)
    # an edge survives the median but not the mean
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    assert torch.equal(MedianFilter(3)(step), step)
    assert not torch.equal(MeanFilter(3)(step), step)


def test_smoothing_and_denoisers_preserve_constant_images() -> None:
    c = torch.full((2, 3, 10, 10), 0.25)
    for t in (MeanFilter(3), GaussianBlur(1.0), NonLocalMeans(), TVMinimization(), JPEG(90)):
        assert torch.allclose(t(c), c, atol=2 / 255), t


def test_denoisers_reduce_noise() -> None:
    g = torch.Generator().manual_seed(1)
    clean = torch.full((2, 1, 16, 16), 0.25)
    clean[..., 4:12, 4:12] = 0.75
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    err = float((noisy - clean).pow(2).mean())
    for t in (NonLocalMeans(h=40.0), TVMinimization(weight=0.1), MedianFilter(3)):
        assert float((t(noisy) - clean).pow(2).mean()) < 0.6 * err, t


def test_rotation_fixed_and_random() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6:] = 1.0  # a bar pointing right from the centre
    up = Rotation(90.0)(x)  # counter-clockwise: the bar points up
    assert float(up[0, 0, :4, 4].sum()) > 2.5 and float(up[0, 0, 4, 6:].sum()) < 0.5
    assert torch.allclose(Rotation(0.0)(x), x, atol=1e-6)
    r = Rotation(12.0, randomize=True)
    assert r.random and not Rotation(12.0).random and not Rotation(0.0, randomize=True).random


def test_jpeg_quality_orders_distortion() -> None:
    x = _images(n=2, c=3, size=16)
    errs = [float((JPEG(q)(x) - x).abs().mean()) for q in (10, 50, 95)]
    assert errs[0] > errs[1] > errs[2]
    assert torch.equal(JPEG(50)(x) * 255, torch.round(JPEG(50)(x) * 255))  # 8-bit output


@pytest.mark.parametrize("name,params,fragment", [
    ("bit-depth", {"bits": 0}, "1..8"),
    ("bit-depth", {"bits": 9}, "1..8"),
    ("bit-depth", {"bits": 2.5}, "integer"),
    ("median", {"kernel": 2}, "odd"),
    ("median", {"kernel": 0}, ">= 1"),
    ("mean", {"kernel": 4}, "odd"),
    ("gaussian-blur", {"sigma": 0}, "positive"),
    ("gaussian-blur", {"sigma": -1.0}, "positive"),
    ("jpeg", {"quality": 0}, "1..100"),
    ("jpeg", {"quality": 101}, "1..100"),
    ("gaussian-noise", {"sigma": 0.0}, "positive"),
    ("nlm", {"search": 10}, "odd"),
    ("nlm", {"h": 0}, "positive"),
    ("tv", {"weight": -0.1}, "positive"),
    ("rotation", {"degrees": 400}, "[-180, 180]"),
    ("rotation", {"fill": "blue"}, "fill"),
    ("median", {"size": 3}, "valid parameters: kernel"),
    ("chain", {"transforms": []}, "non-empty"),
])
def test_parameter_validation(name: str, params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_transform(name, **params)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_unknown_transform_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown transform 'blur'.*median.*nlm"):
        get_transform("blur")


def test_chain_properties_and_build_from_names() -> None:
    c = get_transform("chain", transforms=["median", {"name": "bit-depth", "bits": 3}])
    assert c.transforms == (MedianFilter(3), BitDepth(3))
    assert not c.differentiable and not c.random
    x = _images()
    assert torch.equal(c(x), BitDepth(3)(MedianFilter(3)(x)))
    noisy = Chain((GaussianNoise(), MeanFilter()))
    assert noisy.random and noisy.differentiable


def test_spec_checks_fail_before_work(small_model: Classifier) -> None:
    flat = Classifier(torch.nn.Linear(4, 3), InputSpec((4,)), 3, device="cpu")
    with pytest.raises(ConfigError, match="image inputs"):
        Preprocessed(flat, MedianFilter())
    Preprocessed(flat, BitDepth(2))  # works on any shape
    with pytest.raises(ConfigError, match="does not fit"):
        Preprocessed(small_model, MedianFilter(61))
    with pytest.raises(ConfigError, match="Transform"):
        Preprocessed(small_model, "median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eot_samples"):
        Preprocessed(small_model, GaussianNoise(), eot_samples=0)


def test_preprocessed_is_a_classifier_with_mild_accuracy_cost(small_model: Classifier,
                                                              mnist_test) -> None:
    x, y = mnist_test.x[:300], mnist_test.y[:300]
    base = small_model.accuracy(x, y)
    for t in (BitDepth(1), MedianFilter(3), MeanFilter(3), JPEG(75), TVMinimization(),
              NonLocalMeans(), GaussianNoise(0.1)):
        d = Preprocessed(small_model, t)
        assert isinstance(d, Classifier) and d.num_classes == small_model.num_classes
        assert d.accuracy(x, y) >= base - 0.05, t
        assert d.meta["defense"]["name"] == t.name
    assert LazyPreprocessed is Preprocessed


def test_adaptive_surrogates_match_declarations(small_model: Classifier) -> None:
    assert adaptive(small_model) is small_model
    det = Preprocessed(small_model, MedianFilter())
    assert det.adaptive() is det and not det.masks_gradients
    bpda = Preprocessed(small_model, BitDepth(1)).adaptive()
    assert isinstance(bpda, BPDA)
    eot = Preprocessed(small_model, GaussianNoise(), eot_samples=7).adaptive()
    assert isinstance(eot, EOT) and eot.samples == 7
    both = Preprocessed(small_model, Chain((GaussianNoise(), JPEG()))).adaptive(eot_samples=3)
    assert isinstance(both, EOT) and isinstance(both.module, BPDA) and both.samples == 3
    x = torch.rand(2, 1, 28, 28)
    bq = Preprocessed(small_model, BitDepth(1))
    assert torch.allclose(bpda(x), bq(x), atol=1e-5)  # BPDA's forward is exact


def test_plain_gradients_through_a_masking_defense_warn(small_model: Classifier,
                                                        correct_batch) -> None:
    x, y = correct_batch
    d = Preprocessed(small_model, BitDepth(2))
    with pytest.warns(GradientMaskingWarning, match="adaptive"):
        PGD(eps=0.1, steps=2)(d, x[:4], y[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        PGD(eps=0.1, steps=2)(d.adaptive(), x[:4], y[:4])
        PGD(eps=0.1, steps=2)(Preprocessed(small_model, MedianFilter()), x[:4], y[:4])


@pytest.mark.parametrize("t", [BitDepth(2), JPEG(75)], ids=["bit-depth-2", "jpeg-75"])
def test_obfuscated_gradients_fall_under_bpda(small_model: Classifier, mnist_test, t) -> None:
    """Athalye et al. 2018: plain PGD sees zero gradients through quantisation and
    reports high robust accuracy; PGD through BPDA breaks the same defense."""
    pred = small_model.predict(mnist_test.x[:200])
    idx = torch.nonzero(pred == mnist_test.y[:200]).flatten()[:100]
    x, y = mnist_test.x[idx], mnist_test.y[idx]
    d = Preprocessed(small_model, t)
    attack = PGD(eps=0.3, steps=40, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)
        plain = d.accuracy(attack(d, x, y).x_adv, y)
    through = d.accuracy(attack(d.adaptive(), x, y).x_adv, y)
    assert plain >= 0.85
    assert through <= 0.2
    assert plain - through >= 0.6


def test_eot_attack_on_random_defense(small_model: Classifier, correct_batch) -> None:
    x, y = correct_batch
    x, y = x[:32], y[:32]
    d = Preprocessed(small_model, GaussianNoise(0.1), eot_samples=4)
    res = PGD(eps=0.3, steps=40, seed=0)(d.adaptive(), x, y)
    torch.manual_seed(0)
    assert d.accuracy(res.x_adv, y) <= 0.2
    assert d.accuracy(x, y) >= 0.9


@pytest.mark.parametrize("quality", [25, 75])
def test_jpeg_codec_agrees_with_libjpeg(mnist_test, quality: int) -> None:
    """Cross-check against Pillow's libjpeg on grey MNIST digits: the torch codec's
    output differs from libjpeg's by a small fraction of JPEG's own distortion."""
    import io

    import numpy as np
    image = pytest.importorskip("PIL.Image")
    x = mnist_test.x[:20]
    ref = []
    for im in x:
        buf = io.BytesIO()
        image.fromarray((im[0].numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG",
                                                                              quality=quality)
        buf.seek(0)
        ref.append(torch.from_numpy(np.array(image.open(buf))).float() / 255)
    ref_t = torch.stack(ref).unsqueeze(1)
    ours = JPEG(quality)(x)
    gap = float((ours - ref_t).abs().mean())
    distortion = float((x - ref_t).abs().mean())
    assert gap < 0.5 / 255 and gap < 0.15 * distortion


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("t", ALL, ids=IDS)
def test_transforms_stay_on_cuda(t) -> None:
    x = _images(c=3, size=16).cuda()
    out = t(x)
    assert out.device == x.device and out.shape == x.shape
    if not t.random:  # rounding may flip a level here and there; on average they agree
        assert float((out.cpu() - t(x.cpu())).abs().mean()) < 1 / 255
