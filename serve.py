"""Serve GPT-2 over HTTP: `python serve.py [--model_dir models/124M] [--port 8000]` (OpenAI's API at /v1, a page at /).

The same as `gpt2tf serve`; the flags are `gpt2tf.serve.ServeConfig`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("serve")
