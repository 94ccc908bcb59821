"""Smooth random fields: texture, bias fields, deformations."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], spacing_mm: float, correlation_mm: float
) -> np.ndarray:
    """Gaussian random field of ``shape`` (float32, about zero mean and unit std), correlated over ``correlation_mm``.

    Long correlations are drawn on a coarser grid and upsampled linearly, which keeps this fast.
    """
    sigma = max(correlation_mm / spacing_mm, 0.3)
    factor = max(1, int(sigma // 2))
    coarse_shape = tuple(max(2, -(-n // factor)) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma / factor, mode="wrap")
    if factor > 1:
        zoom = np.asarray(shape) / np.asarray(coarse_shape)
        noise = ndimage.zoom(noise, zoom, order=1, grid_mode=True, mode="grid-mirror")
    noise -= noise.mean()
    return noise / (noise.std() + 1e-6)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """Smooth multiplicative bias (X, Y, Z) float32: exp of a random quadratic polynomial, log-std ~ ``strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = (x, y, z, x * y, x * z, y * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3)
    weights = rng.standard_normal(len(terms)) * np.array([1, 1, 1, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    log_bias = sum(float(w) * t for w, t in zip(weights, terms, strict=True))
    log_bias = np.broadcast_to(log_bias, shape)
    return np.exp(strength * log_bias / (float(log_bias.std()) + 1e-6)).astype(np.float32)
