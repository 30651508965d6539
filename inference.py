"""Generate text with GPT-2: `python inference.py --model_dir models/124M --starter "..." [--nucleus --top_p 0.9]`.

Kept short: the flags mirror `gpt2tf.inference.InferenceConfig` (which owns the defaults) and the work is done by
`gpt2tf.inference.run`.
"""

import argparse

from gpt2tf.cli import import_tensorflow_quietly, run

import_tensorflow_quietly()  # before anything imports TensorFlow: keeps its start-up chatter off the terminal

from gpt2tf.inference import DEFAULT_TOP_K, DEFAULT_TOP_P, InferenceConfig  # noqa: E402

D = InferenceConfig()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", required=True,
                   help="an OpenAI model dir (models/124M) or a fine-tuning run dir (runs/mytext)")
    what = p.add_argument_group("prompts (default: one unconditional sample, started from <|endoftext|>)")
    what.add_argument("--starter", default=D.starter, help="the prompt text")
    what.add_argument("--prompts_file", default=D.prompts_file,
                      help="one prompt per line (\\n escapes allowed), or a .jsonl file with a \"prompt\" field")
    what.add_argument("--interactive", action="store_true", help="ask for prompts in a loop; output is streamed")
    how = p.add_argument_group("sampling")
    how.add_argument("--temperature", type=float, default=D.temperature, help="0 means greedy (default %(default)s)")
    how.add_argument("--top_k", type=int, default=D.top_k,
                     help=f"keep the k most likely tokens; 0 = off (default {DEFAULT_TOP_K}, or 0 with --nucleus)")
    how.add_argument("--nucleus", action="store_true", help=f"nucleus (top-p) sampling, top_p {DEFAULT_TOP_P} "
                                                            "unless --top_p says otherwise; top-k off unless given")
    how.add_argument("--top_p", type=float, default=D.top_p,
                     help="keep the smallest most-likely set whose mass reaches p, in (0, 1]; 1 = off")
    how.add_argument("--greedy", action="store_true", help="always take the most likely token (= --temperature 0)")
    how.add_argument("--repetition_penalty", type=float, default=D.repetition_penalty,
                     help="CTRL-style penalty on tokens already present, > 1 discourages repeats (default: off)")
    how.add_argument("--seed", type=int, default=D.seed, help="same seed, same text (default: random, printed "
                                                              "with --output jsonl)")
    size = p.add_argument_group("length and batching")
    size.add_argument("--output_length", type=int, default=D.output_length,
                      help="new tokens per sample (default %(default)s)")
    size.add_argument("--nsamples", type=int, default=D.nsamples, help="samples per prompt (default %(default)s)")
    size.add_argument("--batch_size", type=int, default=D.batch_size,
                      help="samples computed together (default %(default)s)")
    size.add_argument("--stop", action="append", default=[], metavar="TEXT",
                      help="stop a sample at this text (repeatable; \\n escapes allowed, e.g. --stop '\\n\\n')")
    size.add_argument("--no_eos_stop", action="store_true", help="keep going past <|endoftext|>")
    size.add_argument("--truncate_prompt", action="store_true",
                      help="drop the start of a prompt that would not fit n_ctx with --output_length (else an error)")
    other = p.add_argument_group("output and speed")
    other.add_argument("--output", choices=["plain", "jsonl"], default=D.output,
                       help="plain text, or JSON lines with prompt, sample, text, tokens and seed")
    other.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"], default=D.precision,
                       help="compute dtype (default %(default)s; mixed types are for GPUs)")
    other.add_argument("--no_xla", action="store_true", help="don't compile the decode loop with XLA")
    args = p.parse_args(argv)
    run_config = InferenceConfig(**vars(args))
    from gpt2tf.inference import run as generate_and_print

    generate_and_print(run_config)


if __name__ == "__main__":
    run(main)
