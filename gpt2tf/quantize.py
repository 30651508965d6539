"""Where int8 / bf16 weights: the arithmetic (`gpt2tf.formats.quantization`) and the saved dirs
(`gpt2tf.formats.quantized`) used to live, kept so that `import gpt2tf.quantize` keeps working: a thin re-export.

New code imports from the new home."""

from gpt2tf.formats.quantization import (
    INT8_MAX,
    dequantize,
    encode,
    encode_projection,
    quantize_int8,
    quantize_int8_columns,
    to_bfloat16,
)
from gpt2tf.formats.quantized import LAYOUT_NAME, LAYOUT_VERSION, load_quantized, quantized_format, save_quantized

__all__ = [
    "INT8_MAX",
    "LAYOUT_NAME",
    "LAYOUT_VERSION",
    "dequantize",
    "encode",
    "encode_projection",
    "load_quantized",
    "quantize_int8",
    "quantize_int8_columns",
    "quantized_format",
    "save_quantized",
    "to_bfloat16",
]
