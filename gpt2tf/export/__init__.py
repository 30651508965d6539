"""Exporting a model to run without gpt2tf: a self-contained SavedModel for TensorFlow Serving or any TF program.

    tf_encoder.py  GPT-2's BPE in core TensorFlow ops, exact to `gpt2tf.encoder`
    savedmodel.py  the exported module and its signatures, on the decode runner's own pieces
    litert.py      the LiteRT model (model.tflite: decode and prefill_N signatures with a key/value cache) and the
                   LiteRT-LM bundle (model.litertlm); `gpt2tf.decode.litert` runs it without TensorFlow
    command.py     the `export` command: ExportConfig and export (--format savedmodel or litert)

A new export target (an on-device format) is a module here that runs the same runner pieces (`gpt2tf.decode.runner`)
and a command beside `export`.
"""

from gpt2tf._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ExportConfig": "gpt2tf.export.command",
        "check": "gpt2tf.export.command",
        "export": "gpt2tf.export.command",
        "version_dir": "gpt2tf.export.command",
        "Exported": "gpt2tf.export.savedmodel",
        "signatures": "gpt2tf.export.savedmodel",
        "TFEncoder": "gpt2tf.export.tf_encoder",
        "export_litert": "gpt2tf.export.litert",
    },
)
