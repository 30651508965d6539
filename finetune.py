"""Fine-tune GPT-2 (or train one from scratch): `python finetune.py --model_dir models/124M --dataset_path data.txt`.

The same as `gpt2tf finetune`; the flags are `gpt2tf.train.TrainConfig`'s fields, built by `gpt2tf.cli`.
"""

from gpt2tf.cli import run_script

if __name__ == "__main__":
    run_script("finetune")
