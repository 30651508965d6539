"""The one rule for how a prompt is run: an empty prompt starts from <|endoftext|> (as OpenAI's unconditional
samples do), and a prompt that does not leave room in the context for the new tokens keeps its last tokens (when
the caller allows that) or is refused. The library's `generate`, the engine's requests, the server and evaluation
all prepare prompts here; the export's graph runs the same rule in TensorFlow ops (`prepare_prompts_in_graph`).
"""

from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import EOT_ID


class PromptTooLong(GPT2TFError):
    """A prompt that does not fit the context with the new tokens after it (and may not be truncated); callers
    that speak another language (the HTTP API) re-word it from its fields."""

    def __init__(self, message, *, tokens, new_tokens, n_ctx):
        super().__init__(message)
        self.tokens, self.new_tokens, self.n_ctx = tokens, new_tokens, n_ctx


def prompt_ids(ids):
    """A prompt's token ids as ints; <|endoftext|> alone for an empty prompt."""
    return [int(t) for t in ids] or [EOT_ID]


def prepare_prompt(ids, *, new_tokens, n_ctx, truncate=False, name="the prompt"):
    """The token ids a prompt runs as: `prompt_ids(ids)`, and if it has more than `n_ctx - new_tokens` tokens, its
    last ones (with `truncate`), else PromptTooLong naming `name`."""
    ids = prompt_ids(ids)
    room = n_ctx - new_tokens
    if len(ids) <= room:
        return ids
    if room < 1:
        raise GPT2TFError(
            f"{new_tokens} new tokens leave no room for {name} in the model's context of {n_ctx}: ask for fewer"
        )
    if not truncate:
        raise PromptTooLong(
            f"{name} has {len(ids)} tokens; with {new_tokens} new tokens that exceeds the model's context of {n_ctx}: "
            f"shorten the prompt or the output length, or allow left-truncation of the prompt (--truncate_prompt / "
            f"truncate_prompt=True)",
            tokens=len(ids),
            new_tokens=new_tokens,
            n_ctx=n_ctx,
        )
    return ids[len(ids) - room :]


def prepare_prompts_in_graph(ids, new_tokens, n_ctx):
    """`prepare_prompt(..., truncate=True)` for a batch, in TensorFlow ops: ids a RaggedTensor [batch, None],
    new_tokens [batch]. Returns (tokens [batch, longest kept] right-padded with 0, kept lengths [batch])."""
    import tensorflow as tf  # here: the rule above is plain Python, which the LiteRT runner uses without TensorFlow

    lengths = tf.cast(ids.row_lengths(), tf.int32)
    dense = tf.pad(ids.to_tensor(EOT_ID), [[0, 0], [0, 1]], constant_values=EOT_ID)  # at least 1 wide
    lengths = tf.maximum(lengths, 1)  # an empty prompt is <|endoftext|>: the padding's first column
    kept = tf.minimum(lengths, n_ctx - new_tokens)  # its last tokens, leaving room for the new ones
    first = lengths - kept
    columns = tf.range(tf.reduce_max(kept))[None, :]
    source = tf.minimum(first[:, None] + columns, tf.shape(dense)[1] - 1)
    return tf.where(columns < kept[:, None], tf.gather(dense, source, batch_dims=1), 0), kept
