"""Encoders: the network both branches of the Siamese twin share, chosen by model.encoder.

One module per encoder family (conv4, mlp, resnet12, resnet: 18/34), the external forms
(external: ``python:`` factories, ``timm:``), the registry of names (registry) and the twin that
wraps any of them (siamese)."""

from siamese.models.encoders.registry import (
    ENCODERS,
    EXTERNAL_FORMS,
    backbone_modules,
    backbone_parameters,
    build_encoder,
    check_encoder,
    encoder_args_of,
    projection_of,
)
from siamese.models.encoders.shapes import Size, sides
from siamese.models.encoders.siamese import LEARNED_DISTANCE, SiameseEncoder, preprocess

__all__ = [
    "ENCODERS",
    "EXTERNAL_FORMS",
    "LEARNED_DISTANCE",
    "SiameseEncoder",
    "Size",
    "backbone_modules",
    "backbone_parameters",
    "build_encoder",
    "check_encoder",
    "encoder_args_of",
    "preprocess",
    "projection_of",
    "sides",
]
