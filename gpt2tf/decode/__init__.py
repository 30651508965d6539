"""Generating text: everything from a prompt to its new tokens, on one decode path.

    settings (gpt2tf.settings)  what a valid sampling setting is (no TensorFlow)
    prompts.py                  the one prompt rule: empty -> <|endoftext|>, left truncation
    filters.py                  choosing the next token: per-row filters over float32 logits and the draw
    beams.py                    beam search's bookkeeping (transformers' rules), in TensorFlow ops
    stops.py                    where output ends at a stop string
    runner.py                   the model's compiled pieces and the one decode loop (engine and export share them)
    engine.py                   the scheduler: slots that requests join and leave between steps (Engine, Request)
    generate.py                 generate, generate_text, generate_stream: the library's API on the engine
    litert.py                   a LiteRT export run without TensorFlow (LiteRTModel, generate_stream): LiteRT runs
                                the model, NumPy chooses tokens by the filters' rules; the prompt rule and stops
                                are the ones above

Imports go down this list. A new sampler (a logit processor) goes in `filters` as a per-row tensor setting, with
its field on `Request` and its column in the engine's settings; beams or speculation extend the engine and the
runner rather than adding a loop beside `decode_loop`.
"""

from gpt2tf._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Engine": "gpt2tf.decode.engine",
        "Request": "gpt2tf.decode.engine",
        "generate_text": "gpt2tf.decode.generate",
        "generate_stream": "gpt2tf.decode.generate",
        "beam_search": "gpt2tf.decode.generate",
        "prepare_prompt": "gpt2tf.decode.prompts",
        "LiteRTModel": "gpt2tf.decode.litert",
    },
)
