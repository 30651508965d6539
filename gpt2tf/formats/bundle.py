"""TensorFlow's name-based bundles (`<prefix>.index` + `<prefix>.data-00000-of-00001`): the file format of OpenAI's
checkpoints, of a run's checkpoints and of gpt2tf's quantized dirs. Reading checks what it can before anything is
assigned; writing goes under a temporary prefix, renamed into place with the index last. Every error is one line
ending in `hint`, the format's own advice (download again, use an earlier checkpoint, save again).
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError, first_line
from gpt2tf.files import temp_name


def read_index(prefix, *, hint):
    """({name: shape}, {name: dtype}) from a bundle's index; a damaged index is a one-line error."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        return reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as err:
        raise GPT2TFError(
            f"cannot read checkpoint index {prefix}.index ({first_line(err)}): the file is corrupt; {hint}"
        ) from None


def read_tensor(prefix, key, dtype, *, hint):
    """Tensor `key` of the bundle at `prefix` (TensorFlow checksums it as it reads it)."""
    try:
        (value,) = tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=[key], shape_and_slices=[""], dtypes=[dtype])
    except tf.errors.OpError as err:
        raise GPT2TFError(
            f"cannot read tensor {key} from {prefix} ({first_line(err)}): the data file is corrupt; {hint}"
        ) from None
    return value


def check_data_size(prefix, shapes, dtypes, *, hint):
    """A truncated or padded data file is caught here, before any weight is touched."""
    data_files = sorted(Path(prefix).parent.glob(f"{Path(prefix).name}.data-*-of-*"))
    if not data_files:
        raise GPT2TFError(f"{prefix}.data-00000-of-00001 is missing: the dir is incomplete; {hint}")
    if len(data_files) != 1:
        return  # sharded bundles (not OpenAI's layout) are left to the per-tensor checksums
    expected = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items())
    actual = data_files[0].stat().st_size
    if actual != expected:
        raise GPT2TFError(
            f"{data_files[0]} has {actual:,} bytes but its index describes {expected:,}: "
            f"the file is truncated or corrupt; {hint}"
        )


def write_bundle(prefix, tensors):
    """Write {key: tensor} as a single-shard bundle at `prefix` (under a temporary prefix, then renamed)."""
    temp = temp_name(prefix)
    names = sorted(tensors)
    try:
        tf.raw_ops.SaveV2(
            prefix=temp, tensor_names=names, shape_and_slices=[""] * len(names), tensors=[tensors[n] for n in names]
        )
        replace_bundle(temp, str(prefix))
    except BaseException:  # a full disk, say: what was written under the temporary prefix goes
        for leftover in Path(temp).parent.glob(Path(temp).name + "*"):
            leftover.unlink(missing_ok=True)
        raise


def replace_bundle(temp_prefix, prefix):
    """Rename a bundle written under `temp_prefix` to `prefix`; the index goes last (a reader starts from it)."""
    temp = Path(temp_prefix)
    for data in sorted(temp.parent.glob(temp.name + ".data-*")):
        os.replace(data, prefix + data.name[len(temp.name) :])
    os.replace(f"{temp_prefix}.index", f"{prefix}.index")
