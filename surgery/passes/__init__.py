"""The passes. Importing this package registers them (bertrt.surgery.framework.register)."""

from bertrt.surgery.passes import (  # noqa: F401
    attention,
    dequantize,
    embeddings,
    gelu,
    layernorm,
    layout,
    pack_varseqlen,
    precision,
    qat_weights,
    sanitize,
    skip_layernorm,
)
