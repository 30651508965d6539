"""Evaluate GPT-2: `python evaluate.py --model_dir models/124M --task perplexity --dataset_path wiki.test.raw`.

The same as `gpt2tf evaluate`; the flags are `gpt2tf.evaluate.EvaluateConfig`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("evaluate")
