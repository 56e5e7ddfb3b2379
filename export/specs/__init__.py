"""One spec per network: ONNX names, dynamic dims, profiles, sample inputs and the torch wrapper.

A spec states its tensors with symbolic dims ("batch", "latent_height", ...). `dims` turns the
user's build ranges into (min, opt, max) sizes for each symbol; the profile, the ONNX dynamic
axes, the export and validation inputs all derive from that single table.
"""

from sdtrt.export.specs.base import ComponentSpec
from sdtrt.export.specs.text_encoders import T5EncoderSpec, TextEncoderSpec, XLTextEncoderSpec
from sdtrt.export.specs.transformer import TransformerSpec
from sdtrt.export.specs.unet import UNetSpec
from sdtrt.export.specs.vae import (
    TinyVaeDecoderSpec,
    TinyVaeEncoderSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
)

__all__ = [
    "ComponentSpec",
    "T5EncoderSpec",
    "TextEncoderSpec",
    "TransformerSpec",
    "UNetSpec",
    "TinyVaeDecoderSpec",
    "TinyVaeEncoderSpec",
    "VaeDecoderSpec",
    "VaeEncoderSpec",
    "XLTextEncoderSpec",
]
