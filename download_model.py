"""Download OpenAI's released GPT-2 models: `python download_model.py 124M [355M ...] [--models_dir models]`.

The same as `gpt2tf download`; the flags and the work live in `gpt2tf.cli` and `gpt2tf.download`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("download")
