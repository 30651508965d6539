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

import torch
import transformers
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def main():
    from gpt2tf.encoder import get_encoder

    model_dir, port = sys.argv[1], int(sys.argv[2])
    model, encoder = common.hf_gpt2(model_dir), get_encoder()
    app, lock = FastAPI(), threading.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        prompt = body["prompt"]
        ids = torch.tensor([prompt if isinstance(prompt, list) else encoder.encode(prompt)])  # token ids, or text
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
                model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=body["max_tokens"],
                    min_new_tokens=body["max_tokens"],
                    do_sample=False,
                    pad_token_id=0,
                    streamer=Streamer(),
                )

        threading.Thread(target=run, daemon=True).start()

        async def events():
            while (text := await queue.get()) is not None:
                yield f"data: {json.dumps({'choices': [{'text': text, 'index': 0}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
