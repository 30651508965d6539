"""Beam search against transformers' own (`generate(num_beams=..., do_sample=False)`) on the same checkpoint: the
same hypotheses token for token and the same scores (`sequences_scores`), through the engine beside other rows."""

import numpy as np
import pytest

import gpt2tf
from gpt2tf.decode.engine import Engine, Request
from gpt2tf.decode.generate import beam_search
from gpt2tf.errors import GPT2TFError
from gpt2tf.hparams import HParams

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "The cat sat on the mat.",
    "Hello world",
    "In 1905, Einstein",
    "def f(x):",
    "Once upon a time",
    "The quick brown fox",
    "She picked up the sword",
    "import numpy as np",
    "It was the best of times",
    "Q: What is the capital of France?\nA:",
    "1, 2, 3, 4,",
    "Dear Sir or Madam,",
    "The weather today is",
    "Breaking news:",
    "In the beginning",
    "To be or not to be",
    "<html><body>",
    "The results show that",
    "Once more unto the breach",
    "My favourite food is",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny synthetic checkpoint in gpt2tf and transformers whose distributions are sharp enough to have few
    float-rounding ties (its embedding scaled by 8), and whose <|endoftext|> embedding is made to compete with the
    tokens greedy decoding picks, so that hypotheses end at it as well as at the length limit."""
    path = tmp_path_factory.mktemp("beams")
    gpt2tf.write_synthetic_checkpoint(
        path / "model", HParams(n_vocab=50257, n_ctx=128, n_embd=32, n_head=2, n_layer=2), seed=5
    )
    model = gpt2tf.load_model(path / "model")
    encoder = gpt2tf.get_encoder()
    prompts = [encoder.encode(t) for t in TEXTS]
    wte = model.weights[0]
    table = wte.numpy() * 8
    wte.assign(table)
    greedy = sorted({t for row in gpt2tf.generate(model, prompts, length=8, temperature=0) for t in row})
    table[50256] = 0.65 * table[greedy].sum(0) / np.sqrt(len(greedy) / 6)
    wte.assign(table)
    gpt2tf.save_hf_checkpoint(model, path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path / "hf").eval()
    return model, hf, prompts


def theirs(hf, prompt, length, **kwargs):
    """transformers' hypotheses for one prompt: [(new ids without the <|endoftext|> that ends one, score)]."""
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=length,
        do_sample=False,
        pad_token_id=50256,
        return_dict_in_generate=True,
        output_scores=True,
        **kwargs,
    )
    result = []
    for sequence, score in zip(out.sequences, out.sequences_scores):
        ids = sequence[len(prompt) :].tolist()
        result.append((ids[: ids.index(50256)] if 50256 in ids else ids, float(score)))
    return result


def close(a, b):
    """Scores equal to 1e-4 (relative where they are large: float32 holds about 7 digits)."""
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


@pytest.mark.parametrize(
    "num_beams, returned, length_penalty, early_stopping, ngram",
    [
        (4, 2, 1.0, False, 0),
        (4, 4, 0.6, True, 2),
        (3, 1, 2.0, "never", 0),
        (5, 3, -1.0, False, 3),
    ],
)
def test_beam_search_equals_transformers(pair, num_beams, returned, length_penalty, early_stopping, ngram):
    model, hf, prompts = pair
    settings = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    ours = beam_search(
        model, prompts, length=20, num_return_sequences=returned, no_repeat_ngram_size=ngram, batch_size=4, **settings
    )
    same, ended = 0, 0
    for prompt, got in zip(prompts, ours):
        want = theirs(hf, prompt, 20, num_return_sequences=returned, no_repeat_ngram_size=ngram or None, **settings)
        same += [ids for ids, _ in got] == [ids for ids, _ in want]
        assert all(close(a, b) for (_, a), (_, b) in zip(got, want))
        ended += sum(len(ids) < 20 for ids, _ in got)
    assert same == len(prompts)
    if length_penalty <= 1.0:  # (a penalty above 1 favours the long ones)
        assert ended > 0  # some hypotheses ended at <|endoftext|>, not only at the length limit


def test_bad_words_with_beams_and_generate_returns_the_best(pair):
    model, hf, prompts = pair
    best = [hyps[0][0] for hyps in beam_search(model, prompts[:6], length=12, num_beams=3)]
    bad = [[best[0][0]], [best[1][1], best[1][2]]]
    ours = beam_search(model, prompts[:6], length=12, num_beams=3, num_return_sequences=2, bad_words=bad)
    for prompt, got in zip(prompts[:6], ours):
        want = theirs(hf, prompt, 12, num_beams=3, num_return_sequences=2, bad_words_ids=bad)
        assert [ids for ids, _ in got] == [ids for ids, _ in want]
        assert all(close(a, b) for (_, a), (_, b) in zip(got, want))
    flat = gpt2tf.generate(model, prompts[:6], length=12, num_beams=3, num_return_sequences=2, bad_words=bad)
    assert flat == [ids for hyps in ours for ids, _ in hyps]


def test_a_beam_request_runs_beside_sampling_requests(pair):
    """One engine: a beam request takes its rows beside sampled and greedy ones; each gives what it gives alone."""
    model, _, prompts = pair
    alone_beams = beam_search(model, [prompts[2]], length=16, num_beams=4, num_return_sequences=2)[0]
    sampled = Request(prompt=prompts[0], max_new_tokens=16, temperature=1.0, top_k=40, seed=3)
    greedy = Request(prompt=prompts[1], max_new_tokens=10, temperature=0, no_repeat_ngram_size=2)
    beam = Request(prompt=prompts[2], max_new_tokens=16, num_beams=4, num_return_sequences=2)
    alone = [gpt2tf.generate(model, [prompts[0]], length=16, top_k=40, seed=3)[0]]
    alone.append(gpt2tf.generate(model, [prompts[1]], length=10, temperature=0, no_repeat_ngram_size=2)[0])
    engine = Engine(model, max_batch=6, max_length=64)
    ids = [engine.add(sampled), engine.add(greedy), engine.add(beam)]
    assert engine.free_slots == 0
    outputs, beams = {rid: [] for rid in ids}, None
    while engine.active:
        for output in engine.step(None):
            outputs[output.rid] += output.ids
            if output.beams:
                beams = output.beams
    assert [outputs[ids[0]], outputs[ids[1]]] == alone
    assert [(h[0], round(h[1], 4)) for h in beams] == [(i, round(s, 4)) for i, s in alone_beams]
    assert outputs[ids[2]] == alone_beams[0][0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=4, temperature=0.7), "beam search (num_beams 4) is deterministic and takes no temperature"),
        (dict(num_beams=2, top_k=40, temperature=0), "takes no top_k"),
        (dict(num_beams=2, presence_penalty=1.0), "takes no presence_penalty"),
        (dict(num_beams=3, num_return_sequences=4), "num_return_sequences must be from 1 to num_beams (3)"),
        (dict(num_beams=0), "num_beams must be a whole number >= 1"),
        (dict(num_beams=2, early_stopping="sometimes"), 'early_stopping must be true, false or "never"'),
        (dict(num_beams=2, length_penalty=float("nan")), "length_penalty must be a finite number"),
        (dict(num_beams=2, stop=["\n"]), "beam search does not take stop strings"),
        (dict(num_beams=40), "num_beams 40 needs 40 rows; this engine has 8"),
    ],
)
def test_bad_beam_settings_are_one_line_errors(pair, kwargs, message):
    model, _, prompts = pair
    engine = Engine(model, max_batch=8, max_length=64)
    with pytest.raises(GPT2TFError) as error:
        engine.add(Request(prompt=prompts[0], max_new_tokens=4, **kwargs))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_generate_with_beams_defaults_to_temperature_zero_and_refuses_nsamples(pair):
    model, _, prompts = pair
    assert gpt2tf.generate(model, prompts[:2], length=6, num_beams=2) == [
        h[0][0] for h in beam_search(model, prompts[:2], length=6, num_beams=2)
    ]
    with pytest.raises(GPT2TFError, match="leave nsamples at 1"):
        gpt2tf.generate(model, prompts[:1], length=6, num_beams=2, nsamples=2)
