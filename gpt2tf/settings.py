"""Sampling settings and their checks, with no TensorFlow: one place that says what a valid setting is, for the
library's `generate`, the engine's requests, and the command line (checked before TensorFlow loads).
"""

import dataclasses
import math
import os

from gpt2tf.errors import GPT2TFError

MAX_SEED = 2**31 - 1  # seeds key TF's stateless generators as int32 pairs: larger ones would collide
MAX_LOGPROBS = 5  # the most alternatives a request's log-probabilities list (OpenAI's limit)
# Seconds of decoding per call when the engine chooses how many steps to run (streamed output, the server): tokens
# come in bursts this often, and a request arriving meanwhile waits at most this long to join.
STREAM_INTERVAL = 0.1
MAX_LOGIT_BIAS = 300  # entries in a request's logit_bias (OpenAI's limit); each bias from -100 to 100
MAX_BAD_WORDS = 64  # token sequences a request may ban (a string counts twice: with and without a leading space)
MAX_BAD_WORD_TOKENS = 16  # tokens in one banned sequence


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How the next token is chosen (see `gpt2tf.decode.filters` for the rules). A top_k at or above the vocabulary size
    keeps every token, as 0 does."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's, on generated tokens: logit - [count > 0] * presence
    frequency_penalty: float = 0.0  # OpenAI's: logit - count * frequency
    no_repeat_ngram_size: int = 0  # transformers': a token completing an n-gram already in the text is banned
    min_p: float = 0.0  # transformers' MinPLogitsWarper (0 = off)
    typical_p: float = 1.0  # transformers' TypicalLogitsWarper (1 = off)

    def __post_init__(self):
        if not (_is_number(self.temperature) and 0 <= self.temperature < math.inf):
            raise GPT2TFError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
            raise GPT2TFError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise GPT2TFError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not (_is_number(self.repetition_penalty) and 0 < self.repetition_penalty < math.inf):
            raise GPT2TFError(
                f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not (_is_number(getattr(self, name)) and -2 <= getattr(self, name) <= 2):
                raise GPT2TFError(f"{name} must be from -2 to 2 (0 = off), got {getattr(self, name)}")
        n = self.no_repeat_ngram_size
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            raise GPT2TFError(f"no_repeat_ngram_size must be an integer >= 0 (0 = off), got {n}")
        if not (_is_number(self.min_p) and 0 <= self.min_p <= 1):
            raise GPT2TFError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if not (_is_number(self.typical_p) and 0 < self.typical_p <= 1):
            raise GPT2TFError(f"typical_p must be in (0, 1] (1 = off), got {self.typical_p}")

    @property
    def greedy(self):
        return self.temperature == 0


def check_logit_bias(bias):
    """OpenAI's logit_bias: a mapping of token id (an int, or its decimal string as JSON has it) to a bias from -100
    to 100, at most MAX_LOGIT_BIAS entries. Returns {id: bias} (None and {} are no bias). Whether the ids are in a
    model's vocabulary is the engine's check."""
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise GPT2TFError(f'logit_bias must map token ids to biases, e.g. {{"50256": -100}}, got {bias!r}')
    if len(bias) > MAX_LOGIT_BIAS:
        raise GPT2TFError(f"logit_bias has {len(bias)} entries; at most {MAX_LOGIT_BIAS} are allowed")
    out = {}
    for key, value in bias.items():
        token = key
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            token = int(key)
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise GPT2TFError(f"logit_bias keys must be token ids (whole numbers >= 0), got {key!r}")
        if not (_is_number(value) and -100 <= value <= 100):
            raise GPT2TFError(f"logit_bias values must be numbers from -100 to 100, got {value!r} for token {key}")
        out[token] = out.get(token, 0.0) + float(value)
    return out


def check_bad_words(words):
    """bad_words: strings, or token-id sequences, that may never be generated. Returns a tuple of strings and tuples
    of ids (a lone string is one word)."""
    if words is None:
        return ()
    if isinstance(words, str) or (isinstance(words, (list, tuple)) and words and all(map(_is_token, words))):
        words = [words]  # one word (a string, or one sequence of ids)
    if not isinstance(words, (list, tuple)):
        raise GPT2TFError(f"bad_words must be a list of strings or of token-id lists, got {words!r}")
    out = []
    for word in words:
        if isinstance(word, str):
            if not word:
                raise GPT2TFError("bad_words holds an empty string: give the words to ban, each non-empty")
            out.append(word)
        elif isinstance(word, (list, tuple)) and all(map(_is_token, word)):
            if not word:
                raise GPT2TFError("bad_words holds an empty token list: give each banned sequence's token ids")
            if any(t < 0 for t in word):
                raise GPT2TFError(f"bad_words token ids must be >= 0, got {list(word)}")
            if len(word) > MAX_BAD_WORD_TOKENS:
                raise GPT2TFError(f"a bad word is at most {MAX_BAD_WORD_TOKENS} tokens long, got {len(word)}")
            out.append(tuple(word))
        else:
            raise GPT2TFError(f"bad_words must be strings or lists of token ids, got {word!r}")
    return tuple(out)


# What beam search leaves off: the sampling settings, and the controls that only make sense for sampling.
BEAM_OFF = dict(
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    logit_bias=(),
    min_p=0.0,
    typical_p=1.0,
)


def check_beams(num_beams, num_return_sequences=1, length_penalty=1.0, early_stopping=False, **sampling):
    """Beam search's settings (transformers' meanings), and that `sampling` (BEAM_OFF's names) leaves sampling
    off when num_beams > 1: beam search here is deterministic (beam sampling is not supported)."""
    if not (_is_token(num_beams) and num_beams >= 1):
        raise GPT2TFError(f"num_beams must be a whole number >= 1 (1 = no beam search), got {num_beams!r}")
    if not (_is_token(num_return_sequences) and 1 <= num_return_sequences <= num_beams):
        raise GPT2TFError(
            f"num_return_sequences must be from 1 to num_beams ({num_beams}), got {num_return_sequences!r}"
        )
    if not (_is_number(length_penalty) and math.isfinite(length_penalty)):
        raise GPT2TFError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise GPT2TFError(f'early_stopping must be true, false or "never", got {early_stopping!r}')
    if num_beams == 1:
        return
    for name, off in BEAM_OFF.items():
        if name in sampling and sampling[name] != off and not (name == "logit_bias" and not sampling[name]):
            raise GPT2TFError(
                f"beam search (num_beams {num_beams}) is deterministic and takes no {name}: drop it "
                f"(beam sampling is not supported; no_repeat_ngram_size and bad_words combine with beams)"
            )


def check_seed(seed):
    """A seed is None (draw one) or a whole number in 0..2**31-1."""
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise GPT2TFError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
    return seed


def random_seed():
    """A fresh seed for when none is given (a non-negative int32, as the stateless generators take)."""
    return int.from_bytes(os.urandom(4), "little") >> 1


def _is_token(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
