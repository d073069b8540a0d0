"""Metrics that judge an encryptor: fidelity, size and security."""

from encryption.metrics.fidelity import fidelity, max_value, mse, mse01, psnr, ssim, ssim_torch
from encryption.metrics.security import (
    adjacent_correlation,
    chi_square,
    critical_values,
    entropy,
    npcr_critical,
    npcr_uaci,
    uaci_interval,
)
from encryption.metrics.size import size_metrics

__all__ = [
    "adjacent_correlation",
    "chi_square",
    "critical_values",
    "entropy",
    "fidelity",
    "max_value",
    "mse",
    "mse01",
    "npcr_critical",
    "npcr_uaci",
    "psnr",
    "size_metrics",
    "ssim",
    "ssim_torch",
    "uaci_interval",
]
