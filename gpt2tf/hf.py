"""Where Hugging Face's layout (`gpt2tf.formats.hf`) used to live, kept so that `import gpt2tf.hf` (and every name the
old module had, its imports included) keeps working: a thin re-export. New code imports from the new homes."""

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import write_text_atomic
from gpt2tf.formats.hf import (
    BUFFERS,
    CONFIG_FILE,
    DTYPES,
    INDEX_FILE,
    LAYER_NORM_EPSILON,
    MAX_SHARD_BYTES,
    SHARD_NAME,
    TOKENIZER_CONFIG,
    WEIGHTS_FILE,
    hf_config,
    hf_name,
    hparams_from_config,
    load_hf_model,
    read_tensor,
    restore_hf_weights,
    save_hf_checkpoint,
    tensor_index,
)
from gpt2tf.formats.load import is_hf_dir
from gpt2tf.hparams import HParams
from gpt2tf.layout import EOT_ID

__all__ = [
    "BUFFERS",
    "CONFIG_FILE",
    "DTYPES",
    "EOT_ID",
    "INDEX_FILE",
    "LAYER_NORM_EPSILON",
    "MAX_SHARD_BYTES",
    "SHARD_NAME",
    "TOKENIZER_CONFIG",
    "WEIGHTS_FILE",
    "GPT2TFError",
    "HParams",
    "hf_config",
    "hf_name",
    "hparams_from_config",
    "is_hf_dir",
    "load_hf_model",
    "read_tensor",
    "restore_hf_weights",
    "save_hf_checkpoint",
    "tensor_index",
    "write_text_atomic",
]
