"""Where a model's weights live on disk: every layout gpt2tf reads and writes, and one `load_model` above them.

    tensors.py       what all formats share: checkpoint keys, projections, the completeness check, filling weights
    bundle.py        TensorFlow's name-based bundles (the file format under OpenAI's and gpt2tf's own layouts)
    openai.py        OpenAI's model dirs: hparams.json, the `checkpoint` state file, model.ckpt.*; writing them back
    hf.py            Hugging Face's dirs: config.json, safetensors (sharded or not), the tokenizer's files
    h5.py            the ancestor's Keras .h5 weights files
    quantization.py  int8 / bfloat16 weights: the arithmetic
    quantized.py     gpt2tf's saved quantized dirs
    load.py          detecting a path's layout; load_model, model_hparams, restore_into, load_for_inference
    convert.py       the `convert` command

Each layout's module knows only its own names; nothing below this package (the model, the kernels) imports it.
A new weight format is a module here, a row in `gpt2tf.weight_formats` if the model holds it, and a branch in
`load.detect`.
"""

from gpt2tf._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "load_model": "gpt2tf.formats.load",
        "load_for_inference": "gpt2tf.formats.load",
        "save_openai_checkpoint": "gpt2tf.formats.openai",
        "write_synthetic_checkpoint": "gpt2tf.formats.openai",
        "save_hf_checkpoint": "gpt2tf.formats.hf",
        "load_hf_model": "gpt2tf.formats.hf",
        "save_quantized": "gpt2tf.formats.quantized",
        "load_h5_weights": "gpt2tf.formats.h5",
        "write_h5_weights": "gpt2tf.formats.h5",
    },
)
