"""Facts that several modules share, with no TensorFlow: where things are, what files are called, GPT-2's constants.

Only names live here; what the files hold is the business of their format's module (`gpt2tf.formats.openai` for
OpenAI's model dirs, `gpt2tf.formats.quantized` for saved int8/bf16 weights, `gpt2tf.train.rundir` for run dirs).
Code that must stay light (command-line parsing, configs, downloads) can use them without importing TensorFlow.
"""

from pathlib import Path

# ---- where things are ------------------------------------------------------------------------------------------
VOCAB_DIR = Path(__file__).resolve().parent / "vocab"  # the bundled vocabulary: encoder.json, vocab.bpe
VOCAB_FILES = ("encoder.json", "vocab.bpe")
MODELS_DIR = "models"  # where `download_model.py` puts OpenAI's models (models/124M, ...)
DEFAULT_MODEL = "124M"
DEFAULT_MODEL_DIR = str(Path(MODELS_DIR) / DEFAULT_MODEL)  # what every command loads without --model_dir
RUNS_DIR = "runs"  # where a fine-tuning run goes without --output_dir (runs/<model>-<data>)

# ---- OpenAI's model dir ----------------------------------------------------------------------------------------
STATE_FILE = "checkpoint"  # names the latest checkpoint prefix, like TF's own state file
HPARAMS_FILE = "hparams.json"
PREFIX_NAME = "model.ckpt"  # OpenAI's checkpoint prefix: model.ckpt.index + model.ckpt.data-00000-of-00001

# ---- Hugging Face's model dir --------------------------------------------------------------------------------------
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"  # names the shards of a sharded checkpoint

# ---- gpt2tf's own files ------------------------------------------------------------------------------------------
LITERT_FILE = "model.tflite"  # a LiteRT export: the model, with decode and prefill_N signatures (gpt2tf.export.litert)
LITERT_BUNDLE = "model.litertlm"  # ... the same model, tokenizer and metadata as one LiteRT-LM bundle
LITERT_INFO = "litert.json"  # ... and what gpt2tf's own LiteRT runner reads: shape, max_len, prefill lengths
QUANTIZED_FILE = "quantized.json"  # marks a dir of int8 / bfloat16 weights saved for decoding
QUANTIZED_PREFIX = "weights"  # its TF bundle: weights.index + weights.data-00000-of-00001
CONFIG_FILE = "train_config.json"  # a run's settings, so `--output_dir X` alone resumes run X

# ---- GPT-2's constants -------------------------------------------------------------------------------------------
ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256  # <|endoftext|>'s id: OpenAI's end of text, and the start of an empty prompt
MASKED_VALUE = -1e10  # what OpenAI's code writes into masked attention scores and filtered logits
PROMPT_BUCKET = 64  # prompts are prefilled in chunks of this many tokens; caches are sized in its multiples
