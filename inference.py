"""Generate text with GPT-2: `python inference.py [--model_dir models/124M] --starter "..." [--nucleus --top_p 0.9]`.

The same as `gpt2tf generate`; the flags are `gpt2tf.inference.InferenceConfig`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("generate")
