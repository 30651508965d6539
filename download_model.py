"""Download OpenAI's released GPT-2 models: `python download_model.py 124M [355M ...] [--models_dir models]`.

The same as `gpt2tf download`; the flags are `gpt2tf.download.DownloadCommand`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("download")
