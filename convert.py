"""Convert between layouts: `python convert.py runs/cnndm out/cnndm-hf --to hf` (or `--to openai`).

The same as `gpt2tf convert`; see `gpt2tf.cli.convert_main` and `gpt2tf.hf`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("convert")
