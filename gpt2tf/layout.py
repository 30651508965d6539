"""Facts that several modules share, with no TensorFlow: a model dir's files (OpenAI's names), a run dir's, and
GPT-2's constants.

`checkpoint` owns what the files hold; this module only names them, so that code which must stay light (the
command-line parsing, the training config) can find them without importing TensorFlow.
"""

STATE_FILE = "checkpoint"  # names the latest checkpoint prefix, like TF's own state file
HPARAMS_FILE = "hparams.json"
PREFIX_NAME = "model.ckpt"  # OpenAI's checkpoint prefix
VOCAB_FILES = ("encoder.json", "vocab.bpe")
WEIGHT_FORMATS = ("float32", "int8", "bf16")  # how a model may hold its weights for decoding (gpt2tf.quantize)
QUANTIZED_FILE = "quantized.json"  # marks a dir of int8 / bfloat16 weights saved for decoding (gpt2tf.quantize)
QUANTIZED_PREFIX = "weights"  # its TF bundle: weights.index + weights.data-00000-of-00001
CONFIG_FILE = "train_config.json"  # a run's settings, so `--output_dir X` alone resumes run X

EOT_ID = 50256  # <|endoftext|>: OpenAI's end of text, and the start of an empty prompt
MASKED_VALUE = -1e10  # what OpenAI's code writes into masked attention scores and filtered logits
PROMPT_BUCKET = 64  # prompts are prefilled in chunks of this many tokens; generate sizes caches in its multiples
