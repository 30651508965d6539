"""The simplest server a user would write instead: HF transformers' `model.generate` behind FastAPI, one request at a
time, streaming with `TextIteratorStreamer`. Run by bench/serve.py (which compares it with gpt2tf's server):

    python bench/serve_hf_peer.py MODEL_DIR PORT

It speaks just enough of `/v1/completions` for the bench's clients (prompt, max_tokens, temperature 0, stream).
"""

import asyncio
import json
import os
import sys
import threading

import numpy as np
import tensorflow as tf
import torch
import transformers
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(model_dir):
    """HF's GPT-2 with the weights of an OpenAI-layout checkpoint (read by TF's own reader)."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt"))
    hp = json.load(open(os.path.join(model_dir, "hparams.json")))
    config = transformers.GPT2Config(vocab_size=hp["n_vocab"], n_positions=hp["n_ctx"], n_embd=hp["n_embd"],
                                     n_head=hp["n_head"], n_layer=hp["n_layer"])
    model = transformers.GPT2LMHeadModel(config).eval()
    names = {"transformer.wte.weight": "model/wte", "transformer.wpe.weight": "model/wpe",
             "transformer.ln_f.weight": "model/ln_f/g", "transformer.ln_f.bias": "model/ln_f/b"}
    for i in range(hp["n_layer"]):
        for ours, theirs in [("ln_1/g", "ln_1.weight"), ("ln_1/b", "ln_1.bias"), ("ln_2/g", "ln_2.weight"),
                             ("ln_2/b", "ln_2.bias"), ("attn/c_attn/w", "attn.c_attn.weight"),
                             ("attn/c_attn/b", "attn.c_attn.bias"), ("attn/c_proj/w", "attn.c_proj.weight"),
                             ("attn/c_proj/b", "attn.c_proj.bias"), ("mlp/c_fc/w", "mlp.c_fc.weight"),
                             ("mlp/c_fc/b", "mlp.c_fc.bias"), ("mlp/c_proj/w", "mlp.c_proj.weight"),
                             ("mlp/c_proj/b", "mlp.c_proj.bias")]:
            names[f"transformer.h.{i}.{theirs}"] = f"model/h{i}/{ours}"
    state = {k: torch.from_numpy(np.ascontiguousarray(reader.get_tensor(v).squeeze(0) if v.endswith("/w")
                                                      else reader.get_tensor(v))) for k, v in names.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=False)
    return model


def main():
    from gpt2tf.encoder import get_encoder

    model_dir, port = sys.argv[1], int(sys.argv[2])
    model, encoder = load(model_dir), get_encoder()
    app, lock = FastAPI(), threading.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        ids = torch.tensor([encoder.encode(body["prompt"])])
        queue, loop = asyncio.Queue(), asyncio.get_running_loop()

        class Streamer(transformers.generation.streamers.BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # the prompt
                    self.first = False
                    return
                loop.call_soon_threadsafe(queue.put_nowait, encoder.decode(value.tolist()))

            def end(self):
                loop.call_soon_threadsafe(queue.put_nowait, None)

        def run():
            with lock, torch.no_grad():  # one request at a time
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=body["max_tokens"],
                               min_new_tokens=body["max_tokens"], do_sample=False, pad_token_id=0,
                               streamer=Streamer())

        threading.Thread(target=run, daemon=True).start()

        async def events():
            while (text := await queue.get()) is not None:
                yield f"data: {json.dumps({'choices': [{'text': text, 'index': 0}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
