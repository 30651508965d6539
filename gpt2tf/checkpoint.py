"""Where OpenAI's checkpoint layout (`gpt2tf.formats.openai`), the names all formats share (`gpt2tf.formats.tensors`)
and the one `load_model` (`gpt2tf.formats.load`) used to live, kept so that `import gpt2tf.checkpoint` (and every
name the old module had, its imports included) keeps working: a thin re-export. New code imports from the new homes."""

import tensorflow as tf

from gpt2tf import files
from gpt2tf.errors import GPT2TFError, first_line
from gpt2tf.files import write_text_atomic
from gpt2tf.formats.bundle import replace_bundle, write_bundle
from gpt2tf.formats.load import load_model, model_hparams, restore_into
from gpt2tf.formats.openai import (
    load_hparams,
    openai_tensor_shapes,
    read_state_file,
    repair_hint,
    resolve_checkpoint,
    restore_weights,
    save_openai_checkpoint,
    write_model_dir,
    write_model_files,
    write_state_file,
    write_synthetic_checkpoint,
)
from gpt2tf.formats.tensors import (
    check_tensor_names_and_shapes,
    checkpoint_key,
    checkpoint_shape,
    checkpoint_variables,
    fill_weights,
    model_tensors,
    require_float_weights,
    to_checkpoint_layout,
)
from gpt2tf.hparams import HParams
from gpt2tf.layout import (
    HPARAMS_FILE,
    PREFIX_NAME,
    QUANTIZED_FILE,
    QUANTIZED_PREFIX,
    STATE_FILE,
    VOCAB_DIR,
    VOCAB_FILES,
)
from gpt2tf.model import GPT2


def writing_dir(out_dir, *, what=""):
    """`gpt2tf.files.writing_dir` as this module had it: TensorFlow's errors, too, become one line."""
    return files.writing_dir(out_dir, what=what, errors=(OSError, tf.errors.OpError))


__all__ = [
    "GPT2",
    "HPARAMS_FILE",
    "PREFIX_NAME",
    "QUANTIZED_FILE",
    "QUANTIZED_PREFIX",
    "STATE_FILE",
    "VOCAB_DIR",
    "VOCAB_FILES",
    "GPT2TFError",
    "HParams",
    "check_tensor_names_and_shapes",
    "checkpoint_key",
    "checkpoint_shape",
    "checkpoint_variables",
    "fill_weights",
    "first_line",
    "load_hparams",
    "load_model",
    "model_hparams",
    "model_tensors",
    "openai_tensor_shapes",
    "read_state_file",
    "repair_hint",
    "replace_bundle",
    "require_float_weights",
    "resolve_checkpoint",
    "restore_into",
    "restore_weights",
    "save_openai_checkpoint",
    "to_checkpoint_layout",
    "write_bundle",
    "write_model_dir",
    "write_model_files",
    "write_state_file",
    "write_synthetic_checkpoint",
    "write_text_atomic",
    "writing_dir",
]
