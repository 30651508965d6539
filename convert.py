"""Convert between layouts: `python convert.py runs/cnndm out/cnndm-hf --to hf` (or `--to openai`).

The same as `gpt2tf convert`; the flags are `gpt2tf.formats.convert.ConvertConfig`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("convert")
