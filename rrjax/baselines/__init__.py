"""Baselines that do not use the student: pixel-space restoration before a clean classifier."""

from rrjax.baselines.pixel import (
    DeepDecoder,
    DeepDecoderFit,
    deep_decoder_denoise,
    deep_decoder_inpaint,
    fit_deep_decoder,
    nlm_denoise,
    observed_mask,
)

__all__ = [
    "DeepDecoder",
    "DeepDecoderFit",
    "deep_decoder_denoise",
    "deep_decoder_inpaint",
    "fit_deep_decoder",
    "nlm_denoise",
    "observed_mask",
]
