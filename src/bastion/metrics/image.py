"""Image similarity between batches in [0, 1]: MSE, PSNR, SSIM (per example).

PSNR = 10 log10(MAX^2 / MSE); SSIM after Wang et al. (2004) with an 11x11 Gaussian window
(sigma 1.5), computed by kornia. Windows shrink for images smaller than 11 pixels.
"""

from __future__ import annotations

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error."""
    return (a.detach().float() - b.detach().float()).pow(2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Per-example PSNR in dB (inf where the images are identical)."""
    m = mse(a, b)
    return 10 * torch.log10(max_value**2 / m)


def ssim(a: torch.Tensor, b: torch.Tensor, max_value: float = 1.0, window: int = 11) -> torch.Tensor:
    """Per-example SSIM for image batches [N, C, H, W] (mean of the SSIM map)."""
    import kornia

    a, b = a.detach().float(), b.detach().float()
    if a.dim() != 4:
        raise ValueError(f"ssim needs [N, C, H, W] images, got shape {tuple(a.shape)}")
    w = min(window, a.shape[-1], a.shape[-2])
    w = w if w % 2 == 1 else w - 1
    smap = kornia.metrics.ssim(a, b, window_size=w, max_val=max_value)
    return smap.flatten(1).mean(1)
