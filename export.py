"""Export GPT-2 as a SavedModel: `python export.py --model_dir models/124M --export_dir exported/gpt2`.

The same as `gpt2tf export`; the flags are `gpt2tf.export.ExportConfig`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("export")
