"""What the benchmarks share: the synthetic checkpoint they run on, and Hugging Face's GPT-2 on its weights."""

import json
import os

BENCH_DIR = "/tmp/gpt2tf-bench"  # synthetic checkpoints, written once and reused by every bench


def model_dir(size):
    """A synthetic checkpoint of a released size in OpenAI's exact layout (written on first use)."""
    path = f"{BENCH_DIR}/{size}"
    if not os.path.exists(os.path.join(path, "checkpoint")):
        import gpt2tf
        from gpt2tf.hparams import pretrained

        gpt2tf.write_synthetic_checkpoint(path, pretrained(size))
    return path


def hf_gpt2(path):
    """HF transformers' GPT2LMHeadModel with the weights of the OpenAI-layout checkpoint at `path` (read by TF's own
    reader), in eval mode. Needs `torch` and `transformers`."""
    import numpy as np
    import tensorflow as tf
    import torch
    import transformers

    reader = tf.train.load_checkpoint(os.path.join(path, "model.ckpt"))
    hp = json.load(open(os.path.join(path, "hparams.json")))
    config = transformers.GPT2Config(
        vocab_size=hp["n_vocab"],
        n_positions=hp["n_ctx"],
        n_embd=hp["n_embd"],
        n_head=hp["n_head"],
        n_layer=hp["n_layer"],
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    names = {
        "transformer.wte.weight": "model/wte",
        "transformer.wpe.weight": "model/wpe",
        "transformer.ln_f.weight": "model/ln_f/g",
        "transformer.ln_f.bias": "model/ln_f/b",
    }
    for i in range(hp["n_layer"]):
        for ours, theirs in [
            ("ln_1/g", "ln_1.weight"),
            ("ln_1/b", "ln_1.bias"),
            ("ln_2/g", "ln_2.weight"),
            ("ln_2/b", "ln_2.bias"),
            ("attn/c_attn/w", "attn.c_attn.weight"),
            ("attn/c_attn/b", "attn.c_attn.bias"),
            ("attn/c_proj/w", "attn.c_proj.weight"),
            ("attn/c_proj/b", "attn.c_proj.bias"),
            ("mlp/c_fc/w", "mlp.c_fc.weight"),
            ("mlp/c_fc/b", "mlp.c_fc.bias"),
            ("mlp/c_proj/w", "mlp.c_proj.weight"),
            ("mlp/c_proj/b", "mlp.c_proj.bias"),
        ]:
            names[f"transformer.h.{i}.{theirs}"] = f"model/h{i}/{ours}"
    state = {
        k: torch.from_numpy(
            np.ascontiguousarray(reader.get_tensor(v).squeeze(0) if v.endswith("/w") else reader.get_tensor(v))
        )
        for k, v in names.items()
    }
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied
    model.load_state_dict(state, strict=False)
    return model
