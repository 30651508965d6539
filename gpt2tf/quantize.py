"""Where int8 / bf16 weights: the arithmetic (`gpt2tf.formats.quantization`) and the saved dirs
(`gpt2tf.formats.quantized`) used to live, kept so that `import gpt2tf.quantize` (and every name the old module had,
its imports included) keeps working: a thin re-export. New code imports from the new homes."""

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import check_output_dir
from gpt2tf.formats.quantization import (
    INT8_MAX,
    QUANTIZE_BLOCK_FLOATS,
    dequantize,
    encode,
    encode_projection,
    quantize_int8,
    quantize_int8_columns,
    to_bfloat16,
)
from gpt2tf.formats.quantized import LAYOUT_NAME, LAYOUT_VERSION, load_quantized, quantized_format, save_quantized
from gpt2tf.layout import HPARAMS_FILE, QUANTIZED_FILE, QUANTIZED_PREFIX
from gpt2tf.weight_formats import FORMATS, QUANTIZED_FORMATS

STORED_DTYPES = {name: FORMATS[name].stored_dtype for name in QUANTIZED_FORMATS}

__all__ = [
    "FORMATS",
    "HPARAMS_FILE",
    "INT8_MAX",
    "LAYOUT_NAME",
    "LAYOUT_VERSION",
    "QUANTIZED_FILE",
    "QUANTIZED_FORMATS",
    "QUANTIZED_PREFIX",
    "QUANTIZE_BLOCK_FLOATS",
    "STORED_DTYPES",
    "GPT2TFError",
    "check_output_dir",
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
