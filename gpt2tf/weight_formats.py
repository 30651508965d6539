"""How a model may hold its weights: the one table of weight formats, with no TensorFlow.

`float32` is what checkpoints hold and training uses. `int8` and `bf16` hold the projections' weights and the token
embedding in fewer bytes for decoding (`gpt2tf.formats.quantized` makes them): decoding reads every weight once per
token, so its speed on a CPU is the weights' bytes over the memory's read rate. Everything that needs a fact about
a format reads it here: the model (the dtype a weight is stored in), the loaders (which formats a saved dir may
hold), the memory check (bytes a weight), the native kernels (which custom call reads it), and the flags' choices.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    name: str  # as `--weights` and `load_model(weights=)` name it
    stored_dtype: str  # the dtype a projection's weight (and wte) is held in
    bytes_per_weight: int
    kernel_target: str  # the native kernel's XLA custom-call target that reads it as stored
    scaled: bool  # whether each stored row has a float32 scale beside it (`<name>_scale`)


FORMATS = {
    "float32": WeightFormat("float32", "float32", 4, "gpt2tf_matmul_nt", scaled=False),
    "int8": WeightFormat("int8", "int8", 1, "gpt2tf_matmul_nt_i8", scaled=True),
    "bf16": WeightFormat("bf16", "bfloat16", 2, "gpt2tf_matmul_nt_bf16", scaled=False),
}
WEIGHT_FORMATS = tuple(FORMATS)  # the names, for `choices=`
QUANTIZED_FORMATS = tuple(name for name in FORMATS if name != "float32")  # what a saved quantized dir may hold
