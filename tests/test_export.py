"""The SavedModel export: the in-graph BPE against gpt2tf.encoder; the export, loaded where gpt2tf and
tensorflow_text cannot be imported, against the library's generate, the encoder and the float64 reference model;
the CLI's refusals."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf.decode.generate import generate
from gpt2tf.export.tf_encoder import TFEncoder
from gpt2tf.layout import EOT_ID

from helpers import CONTRACTIONS, EMOJI, SMALL, SPACES, adversarial_documents, real_documents
from reference import read_openai_checkpoint, reference_logits

ROOT = Path(__file__).resolve().parents[1]
HARD = [
    "",
    "a",
    "hi",
    "'s",
    " 's",
    "\n's",
    "5's",
    "I'm 'S 'sa 'll've DON'T ''d 're' it's",
    "a   b\n\nc \t 's",
    "  x",
    "x  ",
    "<|endoftext|> hi",
    "héllo wörld 😀😀 中文字符",
    " " * 50,
    "x" + " " * 20 + "y",
    "\r\n\r\n",
    "\u00a0a\u3000b\u2028c",
    "1,000.5 3.14",
    "ab'",
    *CONTRACTIONS,
    *EMOJI,
    *SPACES,
]


@pytest.fixture(scope="module")
def encoder():
    return gpt2tf.get_encoder()


@pytest.fixture(scope="module")
def tf_encoder(encoder):
    return TFEncoder(encoder)


def test_in_graph_bpe_equals_the_encoder_on_the_corpus(encoder, tf_encoder):
    docs = HARD + adversarial_documents(random.Random(20260522), 400) + real_documents()[:8]
    encode = tf.function(tf_encoder.encode)
    mismatches = []
    for first in range(0, len(docs), 64):
        batch = docs[first : first + 64]
        for text, ids in zip(batch, encode(tf.constant(batch)).to_list()):
            if ids != encoder.encode(text):
                mismatches.append(text[:60])
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]}"


def test_in_graph_decode_round_trips_and_replaces_bad_utf8_as_the_encoder(encoder, tf_encoder):
    texts = HARD[:20]
    ids = tf.ragged.constant([encoder.encode(t) or [] for t in texts], dtype=tf.int32).to_tensor(-1)
    assert [t.decode("utf-8") for t in tf_encoder.decode(ids).numpy()] == texts
    rng = np.random.default_rng(0)
    pieces = [[int(i) for i in rng.integers(0, 50257, 6)] for _ in range(300)]  # byte tokens cut characters apart
    pieces += [[e] for e in range(188, 256)] + [[94, 226], [126, 228]]
    width = max(map(len, pieces))
    padded = tf.constant([p + [-1] * (width - len(p)) for p in pieces], tf.int32)
    got = [t.decode("utf-8") for t in tf_encoder.decode(padded).numpy()]
    assert got == [encoder.decode(p) for p in pieces]


# ---- the export -----------------------------------------------------------------------------------------------------

LOAD_SCRIPT = r"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gpt2tf", "tensorflow_text"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import tensorflow as tf
calls = json.load(open(sys.argv[2]))
m = tf.saved_model.load(sys.argv[1])
out = []
floats = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "typical_p")
def plain(x):
    return x.decode("utf-8") if isinstance(x, bytes) else [plain(y) for y in x] if isinstance(x, list) else x
for name, args in calls:
    kinds = {"prompt": tf.string, "text": tf.string, **dict.fromkeys(floats, tf.float32)}
    result = m.signatures[name](**{k: tf.constant(v, kinds.get(k, tf.int32)) for k, v in args.items()})
    out.append({k: plain(v.numpy().tolist()) for k, v in result.items()})
json.dump(out, open(sys.argv[3], "w"))
"""

PROMPTS = [
    "She picked up the sword",
    "a",
    "",
    "The quick brown fox jumps over the lazy dog " * 12,
]  # the last: 108 tokens
MAX_NEW = [20, 5, 12, 16]
OFF = dict(  # generate's controls, off, per row
    presence_penalty=[0.0] * 4,
    frequency_penalty=[0.0] * 4,
    no_repeat_ngram_size=[0] * 4,
    min_p=[0.0] * 4,
    typical_p=[1.0] * 4,
)
CONTROL_DTYPES = (tf.float32, tf.float32, tf.int32, tf.float32, tf.float32)


def export_cli(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the command quiets TensorFlow itself
    return subprocess.run(
        [sys.executable, str(ROOT / "export.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, encoder):
    """A SMALL model whose <|endoftext|> is as likely as a common token (so rows end early), exported by the CLI."""
    base = tmp_path_factory.mktemp("export")
    source = base / "source"
    gpt2tf.write_synthetic_checkpoint(source, SMALL, seed=11)
    model = gpt2tf.load_model(source)
    common = np.bincount(
        np.concatenate(generate(model, [encoder.encode(p) for p in PROMPTS[:2]], length=30, temperature=0)),
        minlength=SMALL.n_vocab,
    ).argmax()
    wte = model.wte.numpy()
    wte[EOT_ID] = 1.02 * wte[common]
    model.wte.assign(wte)
    model_dir = base / "model"
    gpt2tf.save_openai_checkpoint(model, model_dir)
    result = export_cli(
        "--model_dir", model_dir, "--export_dir", base / "exported", "--max_new_tokens", 8, "--top_k", 5, "--seed", 3
    )
    assert result.returncode == 0, result.stderr
    assert (base / "exported" / "1" / "saved_model.pb").is_file()
    assert not [p for p in (base / "exported").iterdir() if p.name != "1"]  # the temporary dir is gone
    return gpt2tf.load_model(model_dir), model_dir, base / "exported" / "1"


def call_export(path, calls, tmp_path):
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(path), str(tmp_path / "calls.json"), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def test_the_export_runs_without_gpt2tf_and_matches_the_library(exported, encoder, tmp_path):
    model, model_dir, path = exported
    settings = [
        dict(temperature=[0.0] * 4, top_k=[0] * 4, top_p=[1.0] * 4),  # greedy
        dict(temperature=[0.9, 1.0, 0.7, 1.2], top_k=[40, 0, 5, 0], top_p=[0.95, 1.0, 1.0, 0.8]),  # seeded
        dict(temperature=[0.0, 1.0, 0.0, 1.0], top_k=[0, 3, 0, 0], top_p=[1.0, 1.0, 1.0, 1.0]),
    ]  # mixed
    seeds = [7, 8, 9, 10]
    texts = ["She picked up the sword", "I'm 'S 'sa DON'T \n\n x  y", ""] + HARD[12:16]
    calls = [["generate", dict(prompt=PROMPTS, max_new_tokens=MAX_NEW, seed=seeds, **s, **OFF)] for s in settings]
    calls += [
        [
            "generate",
            dict(
                prompt=["a", "b"],
                max_new_tokens=[1000, 2],
                temperature=[0.0, 0.0],
                top_k=[0, 0],
                top_p=[1.0, 1.0],
                seed=[0, 0],
                **{k: v[:2] for k, v in OFF.items()},
            ),
        ],
        ["serving_default", dict(prompt=["Hello", "Hello"])],
        ["encode", dict(text=texts)],
        ["decode", dict(tokens=[[31373, 995, -1], [87, -1, -1], [-1, -1, -1]])],
        ["score", dict(tokens=[[464, 2068, 7586, 21831], [1, 2, -1, -1]])],
    ]
    out = call_export(path, calls, tmp_path)
    ended_early = 0
    for s, result in zip(settings, out[:3]):
        for row, prompt in enumerate(PROMPTS):
            want = generate(
                model,
                [encoder.encode(prompt)],
                length=MAX_NEW[row],
                seed=seeds[row],
                truncate_prompt=True,
                **{k: v[row] for k, v in s.items()},
            )[0]
            tokens = result["tokens"][row]
            assert len(tokens) == max(MAX_NEW)
            assert [t for t in tokens if t >= 0] == want and all(t == -1 for t in tokens[len(want) :]), (s, row)
            assert result["num_tokens"][row] == len(want) and result["text"][row] == encoder.decode(want)
            ended_early += len(want) < MAX_NEW[row]
    assert ended_early >= 2  # rows stopped at <|endoftext|>
    clamped = out[3]
    assert len(clamped["tokens"][0]) == SMALL.n_ctx // 2  # max_new_tokens above the limit is clamped to it
    serving = out[4]["text"]
    assert serving[0] == serving[1]  # --seed 3: fixed at export time
    want = generate(model, [encoder.encode("Hello")], length=8, temperature=1.0, top_k=5, seed=3)[0]
    assert serving[0] == encoder.decode(want)
    encoded = out[5]
    for text, tokens, n in zip(texts, encoded["tokens"], encoded["num_tokens"]):
        assert tokens[:n] == encoder.encode(text) and all(t == -1 for t in tokens[n:])
    assert out[6]["text"] == ["hello world", "x", ""]
    params = read_openai_checkpoint(str(model_dir / "model.ckpt"))
    for tokens, logprobs in zip([[464, 2068, 7586, 21831], [1, 2]], out[7]["logprobs"]):
        logits = reference_logits(params, SMALL.n_head, tokens)
        log_softmax = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        want = [0.0] + [log_softmax[i - 1, t] for i, t in enumerate(tokens) if i]
        np.testing.assert_allclose(logprobs[: len(tokens)], want, rtol=1e-4, atol=1e-4)
        assert all(v == 0.0 for v in logprobs[len(tokens) :])


def test_the_export_takes_the_controls_per_row_and_searches_beams(exported, encoder, tmp_path):
    """generate's numeric controls, per row, and the beam_search signature (4 beams, fixed at export): what the
    library gives with the same settings."""
    model, _, path = exported
    controls = dict(
        presence_penalty=[0.0, 1.5, -1.0, 0.5],
        frequency_penalty=[0.8, 0.0, 0.3, 2.0],
        no_repeat_ngram_size=[2, 0, 3, 1],
        min_p=[0.0, 0.1, 0.0, 0.05],
        typical_p=[1.0, 1.0, 0.9, 0.95],
    )
    sampling = dict(temperature=[0.0, 1.0, 0.8, 0.0], top_k=[0, 20, 0, 0], top_p=[1.0, 1.0, 0.9, 1.0])
    seeds = [4, 5, 6, 7]
    calls = [
        ["generate", dict(prompt=PROMPTS, max_new_tokens=MAX_NEW, seed=seeds, **sampling, **controls)],
        ["beam_search", dict(prompt=PROMPTS, max_new_tokens=MAX_NEW, no_repeat_ngram_size=[0, 2, 0, 3])],
    ]
    out = call_export(path, calls, tmp_path)
    for row, prompt in enumerate(PROMPTS):
        ids = encoder.encode(prompt)
        settings = {k: v[row] for k, v in {**sampling, **controls}.items()}
        want = generate(model, [ids], length=MAX_NEW[row], seed=seeds[row], truncate_prompt=True, **settings)[0]
        assert [t for t in out[0]["tokens"][row] if t >= 0] == want, row
        ngram = [0, 2, 0, 3][row]
        best = gpt2tf.beam_search(
            model,
            [ids],
            length=MAX_NEW[row],
            num_beams=4,
            num_return_sequences=4,
            no_repeat_ngram_size=ngram,
            truncate_prompt=True,
        )[0]
        assert [[t for t in h if t >= 0] for h in out[1]["tokens"][row]] == [h for h, _ in best], row
        np.testing.assert_allclose(out[1]["scores"][row], [s for _, s in best], rtol=1e-4, atol=1e-4)
        assert out[1]["text"][row] == [encoder.decode(h) for h, _ in best]


def test_the_no_xla_export_gives_the_same_tokens(exported, encoder):
    from gpt2tf.export import ExportConfig, Exported

    model, _, _ = exported
    module = Exported(model, encoder, ExportConfig(no_xla=True))
    n = len(PROMPTS)
    out = module.generate(
        tf.constant(PROMPTS),
        tf.constant(MAX_NEW),
        tf.zeros([n]),
        tf.zeros([n], tf.int32),
        tf.ones([n]),
        tf.constant([1] * n),
        *(tf.constant(v[:n], dtype) for v, dtype in zip(OFF.values(), CONTROL_DTYPES)),
    )
    for row, prompt in enumerate(PROMPTS):
        want = generate(model, [encoder.encode(prompt)], length=MAX_NEW[row], temperature=0, truncate_prompt=True)[0]
        assert [t for t in out["tokens"].numpy()[row] if t >= 0] == want


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_dir", "{d}/nowhere"], "nowhere"),
        (["--model_dir", "{model}", "--export_dir", "{export}"], "already holds an export"),
        (["--model_dir", "{model}", "--top_p", "2"], "top_p must be in (0, 1]"),
        (["--model_dir", "{model}", "--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
        (["--model_dir", "{model}", "--version", "0"], "--version must be a positive integer"),
        (
            ["--model_dir", "{model}", "--max_new_tokens", "64", "--export_dir", "{d}/x"],
            "must be below the model's context",
        ),
        (["--model_dir", "{model}", "--export_dir", "{d}/afile"], "is a file, not a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(exported, tmp_path, args, message):
    _, model_dir, path = exported
    (tmp_path / "afile").write_text("not a dir")
    result = export_cli(*[a.format(d=tmp_path, model=model_dir, export=path.parent) for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert (path / "saved_model.pb").is_file()  # the existing export is untouched
