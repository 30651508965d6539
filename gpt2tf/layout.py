"""File names that several modules share, with no TensorFlow: a model dir's files (OpenAI's names) and a run dir's.

`checkpoint` owns what the files hold; this module only names them, so that code which must stay light (the
command-line parsing, the training config) can find them without importing TensorFlow.
"""

STATE_FILE = "checkpoint"  # names the latest checkpoint prefix, like TF's own state file
HPARAMS_FILE = "hparams.json"
PREFIX_NAME = "model.ckpt"  # OpenAI's checkpoint prefix
VOCAB_FILES = ("encoder.json", "vocab.bpe")
CONFIG_FILE = "train_config.json"  # a run's settings, so `--output_dir X` alone resumes run X
