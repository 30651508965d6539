"""Evaluation against an independent float64 reference: strided perplexity, LAMBADA, multiple choice; ROUGE against
rouge-score; the sentence splitter; cnndm end to end; the CLI's errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt2tf
from gpt2tf import evaluate
from gpt2tf.data import TLDR
from gpt2tf.errors import GPT2TFError
from gpt2tf.evaluate import rouge

from helpers import SMALL, TINY
from reference import read_openai_checkpoint, reference_logits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return gpt2tf.load_model(tiny_model_dir), read_openai_checkpoint(str(tiny_model_dir / "model.ckpt"))


@pytest.fixture(scope="module")
def small(small_model_dir):
    return gpt2tf.load_model(small_model_dir), read_openai_checkpoint(str(small_model_dir / "model.ckpt"))


def reference_log_probs(params, n_head, tokens):
    """log p(tokens[p] | tokens[:p]) for p = 1.., in float64."""
    logits = reference_logits(params, n_head, tokens)[:-1]
    top = logits.max(-1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
    return logits[np.arange(len(tokens) - 1), tokens[1:]] - log_z, logits.argmax(-1) == np.asarray(tokens[1:])


# ---- perplexity -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context, stride", [(32, 32), (32, 8), (16, 5), (32, 1), (7, 7)])
def test_strided_perplexity_equals_the_hf_guides_loop_in_float64(tiny, context, stride):
    model, params = tiny
    tokens = [int(t) for t in np.random.default_rng(context * 100 + stride).integers(0, TINY.n_vocab, 150)]
    report, rows = evaluate.perplexity(model, tokens, context=context, stride=stride)
    # The HF guide's loop, spelled out: each window scores its last (end - previous end) tokens, never position 0.
    total, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + context, len(tokens))
        target_length = end - previous_end
        log_p, _ = reference_log_probs(params, TINY.n_head, tokens[begin:end])
        scored = log_p[max(len(log_p) - target_length, 0) :]  # predictions of window positions >= end - trg_len
        total, count = total - scored.sum(), count + len(scored)
        previous_end = end
        if end == len(tokens):
            break
    assert report["scored_tokens"] == count
    assert report["mean_nll"] == pytest.approx(total / count, rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert sum(r["scored"] for r in rows) == count


def test_prepend_eot_scores_the_first_token_and_units_follow_their_definitions(small):
    model, params = small
    enc = gpt2tf.get_encoder()
    text = "The quick brown fox jumps over the lazy dog.\n\nIt was  not amused. Café!"
    tokens = enc.encode(text)
    n_bytes, n_words = evaluate.text_units(text)
    assert (n_bytes, n_words) == (len(text.encode("utf-8")), 14)  # re.split(r"\s+") as lm-evaluation-harness
    report, _ = evaluate.perplexity(model, tokens, prepend_eot=True, n_bytes=n_bytes, n_words=n_words)
    log_p, _ = reference_log_probs(params, SMALL.n_head, [enc.eot_id] + tokens)
    total = -log_p.sum()
    assert report["scored_tokens"] == len(tokens)  # every token of the text, the first after <|endoftext|>
    assert report["bits_per_byte"] == pytest.approx(total / n_bytes / math.log(2), rel=1e-5)
    assert report["word_perplexity"] == pytest.approx(math.exp(total / n_words), rel=1e-5)


# ---- LAMBADA and multiple choice ------------------------------------------------------------------------------------


def test_lambada_against_brute_force_scoring(small):
    model, params = small
    enc = gpt2tf.get_encoder()
    rows = [
        {"text": t}
        for t in (
            "He picked up the sword and swung it at the dragon",
            "Once upon a time there was",
            "The cat sat on the mat",
            "a a a a a a a a a a a a a",
        )
    ]
    report, examples = evaluate.lambada(model, rows, encoder=enc)
    lls, hits = [], []
    for row in rows:
        context, word = row["text"].rsplit(" ", 1)
        ids, target = enc.encode(context), enc.encode(" " + word)
        log_p, greedy = reference_log_probs(params, SMALL.n_head, ids + target)
        lls.append(log_p[-len(target) :].sum())
        hits.append(bool(greedy[-len(target) :].all()))
    assert [e["correct"] for e in examples] == hits
    assert [e["log_likelihood"] for e in examples] == pytest.approx(lls, rel=1e-5)
    assert report["accuracy"] == pytest.approx(100 * sum(hits) / len(rows))
    assert report["perplexity"] == pytest.approx(math.exp(-np.mean(lls)), rel=1e-5)


def test_multiple_choice_against_brute_force_scoring(small):
    model, params = small
    enc = gpt2tf.get_encoder()
    rows = [
        {"context": "The chef cut the onion", "endings": [" with a knife.", " into the sky.", " é"], "label": 0},
        {"context": "Rain fell all day, so", "endings": [" we stayed in.", " the sun burned."], "label": 1},
    ]
    report, examples = evaluate.multiple_choice(model, rows, encoder=enc)
    want = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    for row, example in zip(rows, examples):
        sums = []
        for ending in row["endings"]:
            ids, more = enc.encode(row["context"]), enc.encode(ending)
            sums.append(reference_log_probs(params, SMALL.n_head, ids + more)[0][-len(more) :].sum())
        assert example["log_likelihoods"] == pytest.approx(sums, rel=1e-5)
        for name, norm in (("acc", lambda e: 1), ("acc_norm", len), ("acc_bytes", lambda e: len(e.encode()))):
            pick = int(np.argmax([s / norm(e) for s, e in zip(sums, row["endings"])]))
            assert example[f"pick_{name}"] == pick
            want[name] += pick == row["label"]
    assert {k: report[k] for k in want} == {k: 100 * v / len(rows) for k, v in want.items()}


# ---- ROUGE and sentences --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, sentences",
    [
        (
            "Mr. Smith went to Washington. He arrived at 3 p.m. on Monday.",
            ["Mr. Smith went to Washington.", "He arrived at 3 p.m. on Monday."],
        ),
        (
            'She said "Stop!" Then she left. The U.S. economy grew 2.5 percent.',
            ['She said "Stop!"', "Then she left.", "The U.S. economy grew 2.5 percent."],
        ),
        (
            "Prices rose 3.14% in Jan. last year. J. R. R. Tolkien wrote it. Really? Yes.",
            ["Prices rose 3.14% in Jan. last year.", "J. R. R. Tolkien wrote it.", "Really?", "Yes."],
        ),
        ("no capital after this. so it stays one", ["no capital after this. so it stays one"]),
        ("'Quoted.' (Bracketed.) End", ["'Quoted.'", "(Bracketed.)", "End"]),
    ],
)
def test_the_sentence_splitter_on_hard_cases(text, sentences):
    assert rouge.split_sentences(text) == sentences


def test_rouge_equals_rouge_score_on_the_same_pairs():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    pairs = [
        ("Cats sat on mats.\nDogs ran.", "The cat sat on the mat. A dog was running."),
        ("Markets rose sharply today.", "Stocks rose. Markets were up sharply."),
        ("Nothing in common.", "Entirely different words here."),
    ]
    for reference, prediction in pairs:
        want = scorer.score(
            "\n".join(rouge.split_sentences(" ".join(reference.split()))),
            "\n".join(rouge.split_sentences(" ".join(prediction.split()))),
        )
        assert rouge.score(reference, prediction) == pytest.approx({k: 100 * v.fmeasure for k, v in want.items()})
    assert rouge.score("a b c", "a b c")["rougeLsum"] == pytest.approx(100.0)


def test_cnndm_end_to_end_on_the_bundled_sample(small):
    model, _ = small
    config = evaluate.EvaluateConfig(
        task="cnndm", dataset_path=str(ROOT / "datasets" / "cnndm_sample" / "val.jsonl"), max_new_tokens=12, seed=3
    )
    report, examples = evaluate.TASKS["cnndm"](model, config, gpt2tf.get_encoder(), None)
    articles = [
        json.loads(line)
        for line in (ROOT / "datasets" / "cnndm_sample" / "val.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert report["examples"] == len(articles) == len(examples)
    for article, example in zip(articles, examples):
        highlights = (
            article["highlights"] if isinstance(article["highlights"], list) else article["highlights"].split("\n")
        )
        assert example["reference"] == "\n".join(h.strip() for h in highlights if h.strip())
        assert example["rouge1"] == pytest.approx(rouge.score(example["reference"], example["summary"])["rouge1"])
    lead = np.mean(
        [
            rouge.score(e["reference"], rouge.first_sentences(a["article"], 3))["rouge2"]
            for e, a in zip(examples, articles)
        ]
    )
    assert report["lead3"]["rouge2"] == pytest.approx(lead)
    # The summaries are the library's generation from the prompts the recipe describes.
    again = evaluate.summarize(
        model, [a["article"] for a in articles[:2]], encoder=gpt2tf.get_encoder(), max_new_tokens=12, seed=3, top_k=2
    )
    assert again == [e["summary"] for e in examples[:2]]


def test_cnndm_with_beams_and_no_repeat_ngrams(small):
    """--num_beams and --no_repeat_ngram_size: the summaries are beam_search's best hypotheses of the same prompts."""
    model, _ = small
    path = str(ROOT / "datasets" / "cnndm_sample" / "val.jsonl")
    config = evaluate.EvaluateConfig(
        task="cnndm", dataset_path=path, max_new_tokens=10, max_examples=3, num_beams=3, no_repeat_ngram_size=3
    )
    report, examples = evaluate.TASKS["cnndm"](model, config, gpt2tf.get_encoder(), None)
    assert report["sampling"] == "beam search, 3 beams, length_penalty 1.0, no_repeat_ngram_size 3"
    encoder = gpt2tf.get_encoder()
    articles = [json.loads(line)["article"] for line in Path(path).read_text().splitlines() if line.strip()][:3]
    tail = encoder.encode(TLDR)
    room = model.hparams.n_ctx - 10 - len(tail)
    prompts = [encoder.encode(a)[:room] + tail for a in articles]
    best = gpt2tf.beam_search(model, prompts, length=10, num_beams=3, no_repeat_ngram_size=3)
    want = [rouge.first_sentences(encoder.decode(hyps[0][0]), 3) for hyps in best]
    assert [e["summary"] for e in examples] == want


# ---- the CLI --------------------------------------------------------------------------------------------------------


def cli(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_the_cli_prints_a_table_or_json_and_writes_reports(small_model_dir, tmp_path):
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    other = tmp_path / "other"
    gpt2tf.write_synthetic_checkpoint(other, SMALL, seed=99)
    result = cli(
        "--model_dir",
        small_model_dir,
        other,
        "--task",
        "perplexity",
        "--dataset_path",
        tmp_path / "text.txt",
        "--context",
        "32",
        "--stride",
        "16",
        "--report_file",
        tmp_path / "r.json",
        "--examples_file",
        tmp_path / "rows.jsonl",
    )
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert str(small_model_dir) in header and str(other) in header  # side by side
    assert any(line.startswith("perplexity") for line in lines) and any(
        line.startswith("scored_tokens") for line in lines
    )
    report = json.loads((tmp_path / "r.json").read_text())["models"]
    first, second = report[str(small_model_dir)], report[str(other)]
    assert first["scored_tokens"] == second["scored_tokens"] > 0 and first["perplexity"] != second["perplexity"]
    assert first["context"] == 32 and first["stride"] == 16
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sum(r["scored"] for r in rows if r["model_dir"] == str(other)) == second["scored_tokens"]
    result = cli(
        "--model_dir",
        small_model_dir,
        "--task",
        "perplexity",
        "--dataset_path",
        tmp_path / "text.txt",
        "--output",
        "json",
    )
    assert json.loads(result.stdout)["task"] == "perplexity"


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda d: (d / "empty.txt").write_text(""), ["--dataset_path", "{d}/empty.txt"], "holds no text"),
        (lambda d: (d / "bin.txt").write_bytes(b"\xff\xfe\x00"), ["--dataset_path", "{d}/bin.txt"], "not UTF-8 text"),
        (
            lambda d: (d / "l.jsonl").write_text('{"text": "a b"}\n{"txt": "c d"}\n'),
            ["--task", "lambada", "--dataset_path", "{d}/l.jsonl"],
            "l.jsonl:2: expected a field 'text'",
        ),
        (
            lambda d: (d / "m.jsonl").write_text('{"context": "x", "endings": [" a"], "label": 3}\n'),
            ["--task", "multiple_choice", "--dataset_path", "{d}/m.jsonl"],
            "a label that indexes them",
        ),
        (
            lambda d: (d / "h.jsonl").write_text(
                '{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": [" d"], "label": ""}\n'
            ),
            ["--task", "multiple_choice", "--dataset_path", "{d}/h.jsonl"],
            "HellaSwag's test file has no labels",
        ),
        (
            lambda d: (d / "t.txt").write_text("words " * 50),
            ["--dataset_path", "{d}/t.txt", "--context", "16", "--stride", "32"],
            "--stride 32 is larger than --context 16",
        ),
        (
            lambda d: (d / "t.txt").write_text("words " * 50),
            ["--dataset_path", "{d}/t.txt", "--context", "65"],
            "--context 65 is larger than the model's context of 64",
        ),
        (lambda d: None, ["--task", "bleu", "--dataset_path", "x"], "invalid choice: 'bleu'"),
        (lambda d: None, ["--task", "lambada"], "--task lambada needs --dataset_path"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(small_model_dir, tmp_path, make, args, message):
    make(tmp_path)
    result = cli("--model_dir", small_model_dir, *[a.format(d=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr


def test_scoring_does_not_retrace_for_new_lengths_in_a_bucket(tiny):
    from gpt2tf.score import score, scorer_for

    model, _ = tiny
    rng = np.random.default_rng(0)
    score(model, [([1, 2, 3], 0)])
    before = scorer_for(model).score_batch.experimental_get_tracing_count()
    score(model, [(list(rng.integers(0, 100, n)), 0) for n in (2, 5, 17, 31, 32)])  # one bucket: 32 (n_ctx)
    assert scorer_for(model).score_batch.experimental_get_tracing_count() == before
    with pytest.raises(GPT2TFError, match="scoring takes 2 to the model's context of 32"):
        score(model, [([1] * 33, 0)])


def test_the_hellaswag_converter_and_reading_hellaswag_directly(small, small_model_dir, tmp_path):
    row = {
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the "
        "window of a car, and a woman wearing winter clothes smiles.",
        "ctx_b": "then",
        "endings": [
            ", the man adds wax to the windshield and cuts it.",
            ", a person board a ski lift.",
            ", the man puts on a christmas coat, knitted with netting.",
            ", the man continues removing the snow on his car.",
        ],
        "label": "3",
    }
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "datasets" / "convert_hellaswag.py"), str(tmp_path / "val.jsonl")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    converted = json.loads(out)
    assert converted["context"] == (
        "Removing ice from car: Then, the man writes over the snow covering the window "
        "of a car, and a woman wearing winter clothes smiles. Then"
    )
    assert converted["endings"][3] == " , the man continues removing the snow on his car." and converted["label"] == 3
    # evaluate.py reads HellaSwag's own file as the converted rows
    result = cli(
        "--model_dir",
        small_model_dir,
        "--task",
        "multiple_choice",
        "--dataset_path",
        tmp_path / "val.jsonl",
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    want, _ = evaluate.multiple_choice(small[0], [converted], encoder=gpt2tf.get_encoder())
    got = json.loads(result.stdout)
    assert {k: got[k] for k in want} == pytest.approx(want)


def test_a_continuation_longer_than_the_context_is_scored_from_its_end(small):
    """A context of n_ctx tokens holds no room for any of the context: the continuation's last n_ctx tokens are
    scored, each after the ones before it (the first has nothing before it)."""
    model, params = small
    enc = gpt2tf.get_encoder()
    n_ctx = model.hparams.n_ctx
    continuation = " a" * (n_ctx + 5)
    ((total, _, count),) = evaluate.continuations(model, [("Hello", continuation)], encoder=enc)
    ids = enc.encode(continuation)[-n_ctx:]
    want = reference_log_probs(params, model.hparams.n_head, ids)[0].sum()
    assert count == n_ctx - 1 and total == pytest.approx(want, abs=1e-3)
