"""Where Hugging Face's layout (`gpt2tf.formats.hf`) used to live, kept so that `import gpt2tf.hf` keeps working: a
thin re-export.

New code imports from the new home."""

from gpt2tf.formats.hf import (
    CONFIG_FILE,
    INDEX_FILE,
    MAX_SHARD_BYTES,
    SHARD_NAME,
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

__all__ = [
    "CONFIG_FILE",
    "INDEX_FILE",
    "MAX_SHARD_BYTES",
    "SHARD_NAME",
    "WEIGHTS_FILE",
    "hf_config",
    "hf_name",
    "hparams_from_config",
    "load_hf_model",
    "read_tensor",
    "restore_hf_weights",
    "save_hf_checkpoint",
    "tensor_index",
]
