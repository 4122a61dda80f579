"""Baselines that do not use the student: pixel-space restoration before a clean classifier."""

from rrjax.baselines.pixel import (
    RESTORATIONS,
    DeepDecoder,
    DeepDecoderFit,
    deep_decoder_denoise,
    deep_decoder_inpaint,
    fit_deep_decoder,
    nlm_denoise,
    observed_mask,
    restoration,
)

__all__ = [
    "RESTORATIONS",
    "DeepDecoder",
    "DeepDecoderFit",
    "deep_decoder_denoise",
    "deep_decoder_inpaint",
    "fit_deep_decoder",
    "nlm_denoise",
    "observed_mask",
    "restoration",
]
