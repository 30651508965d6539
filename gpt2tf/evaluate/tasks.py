"""The evaluation tasks as the field computes them: perplexity, LAMBADA, multiple choice, CNN/Daily Mail ROUGE.

Each task is a function of a model and its data that returns (report dict, per-example rows), and `TASKS` maps the
`--task` names to `task(model, config, encoder, progress)`. The definitions are the field's (`docs/evaluate.md`),
written out in each function's docstring; every log-likelihood comes from `gpt2tf.score`, the path fine-tuning's
validation uses too, and every summary from `gpt2tf.decode.generate`.
"""

import json
import math
import re
from pathlib import Path

from gpt2tf.data import CNNDM_TFDS_NAME, TLDR, cnndm_source, find_files, read_text
from gpt2tf.decode.generate import generate
from gpt2tf.decode.prompts import prepare_prompt
from gpt2tf.errors import GPT2TFError
from gpt2tf.evaluate import rouge
from gpt2tf.layout import EOT_ID
from gpt2tf.score import score, text_units, windows

# ---------------------------------------------------------------------------------------------------------------
# Perplexity


def perplexity(
    model,
    tokens,
    *,
    context=None,
    stride=None,
    prepend_eot=False,
    n_bytes=None,
    n_words=None,
    eot_id=EOT_ID,
    progress=None,
    jit_compile=True,
):
    """Strided perplexity of a token stream, as the HF guide computes it: windows of `context` tokens (default
    n_ctx) starting every `stride` (default `context`), each scoring only the tokens no earlier window scored; the
    first token is scored only with `prepend_eot` (after <|endoftext|>). Returns (report, per-window rows).

    Report: scored_tokens, mean_nll (nats per scored token), perplexity = exp(mean_nll), and, given the text's
    `n_bytes` and `n_words`, bits_per_byte (total NLL in bits / bytes) and word_perplexity (exp(total NLL / words)).
    """
    n_ctx = model.hparams.n_ctx
    context = context or n_ctx
    if context > n_ctx:
        raise GPT2TFError(f"--context {context} is larger than the model's context of {n_ctx}")
    stride = stride or context
    tokens = ([eot_id] if prepend_eot else []) + [int(t) for t in tokens]
    if len(tokens) < 2:
        raise GPT2TFError("the text has fewer than 2 tokens: nothing to score")
    spans = windows(len(tokens), context=context, stride=stride)
    scored = score(
        model, [(tokens[begin:end], first) for begin, end, first in spans], progress=progress, jit_compile=jit_compile
    )
    total = sum(-float(log_p.sum()) for log_p, _ in scored)
    count = sum(len(log_p) for log_p, _ in scored)
    report = {
        "scored_tokens": count,
        "mean_nll": total / count,
        "perplexity": math.exp(total / count),
        "context": context,
        "stride": stride,
        "prepend_eot": prepend_eot,
    }
    if n_bytes:
        report["bits_per_byte"] = total / n_bytes / math.log(2)
    if n_words:
        report["word_perplexity"] = math.exp(total / n_words)
    rows = [
        {"window": i, "begin": begin, "end": end, "scored": len(log_p), "nll": -float(log_p.sum())}
        for i, ((begin, end, _), (log_p, _)) in enumerate(zip(spans, scored))
    ]
    return report, rows


def _perplexity_task(model, config, encoder, progress):
    texts = [read_text(f) for f in find_files(config.dataset_path)]
    if not any(t.strip() for t in texts):
        raise GPT2TFError(f"--dataset_path {config.dataset_path} holds no text")
    tokens = []
    for text in texts:  # documents joined by <|endoftext|>, as the text loader joins them
        tokens += ([encoder.eot_id] if tokens else []) + encoder.encode(text)
    units = [text_units(t) for t in texts]
    return perplexity(
        model,
        tokens,
        context=config.context,
        stride=config.stride,
        prepend_eot=config.prepend_eot,
        n_bytes=sum(u[0] for u in units),
        n_words=sum(u[1] for u in units),
        eot_id=encoder.eot_id,
        progress=progress,
        jit_compile=not config.no_xla,
    )


# ---------------------------------------------------------------------------------------------------------------
# LAMBADA and multiple choice: log-likelihoods of a continuation given a context


def read_jsonl(path, fields, max_rows=0):
    """Rows of a JSONL file, each checked to hold `fields` ({name: type}); a bad row is an error with its line."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GPT2TFError(f"--dataset_path {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GPT2TFError(f"cannot read {path} as UTF-8 text ({err})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise GPT2TFError(f"{path}:{number}: not a JSON object") from None
        for name, kind in fields.items():
            if not isinstance(row, dict) or not isinstance(row.get(name), kind) or isinstance(row.get(name), bool):
                kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
                raise GPT2TFError(f"{path}:{number}: expected a field {name!r} of type {kinds}")
        rows.append(row)
        if max_rows and len(rows) == max_rows:
            break
    if not rows:
        raise GPT2TFError(f"{path} holds no rows")
    return rows


def continuations(model, pairs, *, encoder, progress=None, jit_compile=True):
    """For (context, continuation) texts: the continuation's summed log-likelihood given the context, and whether
    greedy decoding reproduces all of its tokens. The two are tokenized apart (a continuation starting with a
    space begins a new pre-split piece either way)."""
    n_ctx = model.hparams.n_ctx
    items = []
    for context, continuation in pairs:
        ids, more = encoder.encode(context), encoder.encode(continuation)
        if not more:
            raise GPT2TFError(f"an empty continuation for {context[-40:]!r}")
        if len(more) >= n_ctx:  # the continuation alone fills the context: its last n_ctx tokens, scored from 1
            items.append((more[-n_ctx:], 1))
            continue
        # The continuation whole, after as much of the context's end as fits (an empty one: <|endoftext|>).
        ids = prepare_prompt(ids, new_tokens=len(more), n_ctx=n_ctx, truncate=True)
        items.append((ids + more, len(ids)))
    return [
        (float(log_p.sum()), bool(greedy.all()), len(log_p))
        for log_p, greedy in score(model, items, progress=progress, jit_compile=jit_compile)
    ]


def lambada(model, rows, *, encoder, progress=None, jit_compile=True):
    """LAMBADA as lm-evaluation-harness's lambada_openai: context = every word of `text` but the last (split on
    single spaces), target = " " + the last word. accuracy = the share of rows whose greedy decoding reproduces every
    target token (whole-word accuracy; the GPT-2 paper's 45.99 for 117M counts the last BPE token only);
    perplexity = exp(-mean over rows of the target's summed log-likelihood)."""
    pairs = []
    for row in rows:
        context, _, word = row["text"].rpartition(" ")
        if not word:
            raise GPT2TFError(f"a LAMBADA row whose text ends in a space: {row['text'][-40:]!r}")
        pairs.append((context, " " + word))
    scored = continuations(model, pairs, encoder=encoder, progress=progress, jit_compile=jit_compile)
    report = {
        "examples": len(rows),
        "accuracy": 100.0 * sum(hit for _, hit, _ in scored) / len(rows),
        "perplexity": math.exp(-sum(ll for ll, _, _ in scored) / len(rows)),
    }
    examples = [
        {"target": target, "log_likelihood": ll, "correct": hit} for (_, target), (ll, hit, _) in zip(pairs, scored)
    ]
    return report, examples


def multiple_choice(model, rows, *, encoder, progress=None, jit_compile=True):
    """Each ending's summed log-likelihood given the context; acc = the highest sum picks the label, acc_norm = the
    highest sum / the ending's length in characters, acc_bytes = / its UTF-8 bytes (lm-evaluation-harness's)."""
    pairs = [(row["context"], ending) for row in rows for ending in row["endings"]]
    scored = iter(continuations(model, pairs, encoder=encoder, progress=progress, jit_compile=jit_compile))
    hits = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    examples = []
    for i, row in enumerate(rows):
        sums = [next(scored)[0] for _ in row["endings"]]
        picks = {
            "acc": [s for s in sums],
            "acc_norm": [s / max(len(e), 1) for s, e in zip(sums, row["endings"])],
            "acc_bytes": [s / max(len(e.encode("utf-8")), 1) for s, e in zip(sums, row["endings"])],
        }
        chosen = {name: max(range(len(values)), key=values.__getitem__) for name, values in picks.items()}
        for name in hits:
            hits[name] += chosen[name] == row["label"]
        examples.append(
            {"index": i, "label": row["label"], "log_likelihoods": sums, **{f"pick_{k}": v for k, v in chosen.items()}}
        )
    return {"examples": len(rows), **{name: 100.0 * n / len(rows) for name, n in hits.items()}}, examples


def _lambada_task(model, config, encoder, progress):
    rows = read_jsonl(config.dataset_path, {"text": str}, config.max_examples)
    return lambada(model, rows, encoder=encoder, progress=progress, jit_compile=not config.no_xla)


HELLASWAG_FIELDS = {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": list, "label": (str, int)}


def _hellaswag_clean(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_row(row):
    """A row of HellaSwag's own files as a multiple-choice row, as lm-evaluation-harness builds it: context =
    activity_label + ": " + ctx_a + " " + ctx_b capitalized, each ending prefixed by a space, and the harness's light
    clean-up (" [title]" -> ". ", "[header]"-style tags and double spaces removed) on both."""
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {
        "context": _hellaswag_clean(row["activity_label"] + ": " + context),
        "endings": [" " + _hellaswag_clean(ending) for ending in row["endings"]],
        "label": int(row["label"]),
    }


def _multiple_choice_task(model, config, encoder, progress):
    first = read_jsonl(config.dataset_path, {}, 1)[0]
    if isinstance(first, dict) and "ctx_a" in first and "context" not in first:  # HellaSwag's own file
        rows = []
        for number, row in enumerate(read_jsonl(config.dataset_path, HELLASWAG_FIELDS, config.max_examples), 1):
            if not str(row["label"]).strip().isdigit():
                raise GPT2TFError(
                    f"{config.dataset_path}: row {number}'s label {row['label']!r} is not an ending's "
                    f"index; HellaSwag's test file has no labels, use its validation file"
                )
            rows.append(hellaswag_row(row))
    else:
        rows = read_jsonl(config.dataset_path, {"context": str, "endings": list, "label": int}, config.max_examples)
    for number, row in enumerate(rows, 1):
        if (
            not row["endings"]
            or not all(isinstance(e, str) for e in row["endings"])
            or not 0 <= row["label"] < len(row["endings"])
        ):
            raise GPT2TFError(
                f"{config.dataset_path}: row {number} needs non-empty string endings and a label that indexes them"
            )
    return multiple_choice(model, rows, encoder=encoder, progress=progress, jit_compile=not config.no_xla)


# ---------------------------------------------------------------------------------------------------------------
# CNN / Daily Mail: TL;DR summaries and ROUGE


def summarize(
    model, articles, *, encoder, max_new_tokens=100, sentences=3, seed=0, batch_size=8, jit_compile=True, **sampling
):
    """The paper's recipe: article (cut to leave room) + the fine-tuning loader's TL;DR joining, `max_new_tokens`
    sampled (top-k 2 by default), the first `sentences` generated sentences kept."""
    tail = encoder.encode(TLDR)
    room = model.hparams.n_ctx - max_new_tokens - len(tail)
    if room < 1:
        raise GPT2TFError(
            f"--max_new_tokens {max_new_tokens} leaves no room for the article in the model's "
            f"context of {model.hparams.n_ctx}"
        )
    prompts = [encoder.encode(article)[:room] + tail for article in articles]
    outputs = generate(  # (beam search takes no seed)
        model, prompts, length=max_new_tokens, seed=seed, batch_size=batch_size, jit_compile=jit_compile, **sampling
    )
    return [rouge.first_sentences(encoder.decode(ids), sentences) for ids in outputs]


def _cnndm_task(model, config, encoder, progress):
    source = cnndm_source(config.dataset_path or CNNDM_TFDS_NAME, config.split)
    pairs = []
    for pair in source.articles():
        pairs.append(pair)
        if config.max_examples and len(pairs) == config.max_examples:
            break
    if config.num_beams > 1:
        sampling = dict(num_beams=config.num_beams, length_penalty=config.length_penalty)
        how = f"beam search, {config.num_beams} beams, length_penalty {config.length_penalty}"
    elif config.greedy:
        sampling, how = dict(temperature=0), "greedy"
    else:
        sampling = dict(top_k=config.top_k, top_p=config.top_p, temperature=config.temperature)
        how = f"top_k {config.top_k}, top_p {config.top_p}, temperature {config.temperature}"
    if config.no_repeat_ngram_size:
        sampling["no_repeat_ngram_size"] = config.no_repeat_ngram_size
        how += f", no_repeat_ngram_size {config.no_repeat_ngram_size}"
    summaries = []
    for first in range(0, len(pairs), config.batch_size):
        batch = pairs[first : first + config.batch_size]
        summaries += summarize(
            model,
            [a for a, _ in batch],
            encoder=encoder,
            max_new_tokens=config.max_new_tokens,
            sentences=config.sentences,
            seed=config.seed + first,
            batch_size=config.batch_size,
            jit_compile=not config.no_xla,
            **sampling,
        )
        if progress:
            progress(len(batch))
    examples, totals, lead = (
        [],
        dict.fromkeys(("rouge1", "rouge2", "rougeLsum"), 0.0),
        dict.fromkeys(("rouge1", "rouge2", "rougeLsum"), 0.0),
    )
    for (article, highlights), summary in zip(pairs, summaries):
        reference = "\n".join(highlights)
        scores, lead3 = rouge.score(reference, summary), rouge.score(reference, rouge.first_sentences(article, 3))
        for name in totals:
            totals[name] += scores[name]
            lead[name] += lead3[name]
        examples.append({"summary": summary, "reference": reference, **scores})
    n = len(pairs)
    report = {
        "examples": n,
        **{name: value / n for name, value in totals.items()},
        "lead3": {name: value / n for name, value in lead.items()},
        "sampling": how,
        "max_new_tokens": config.max_new_tokens,
        "sentences": config.sentences,
    }
    return report, examples


TASKS = {
    "perplexity": _perplexity_task,
    "lambada": _lambada_task,
    "multiple_choice": _multiple_choice_task,
    "cnndm": _cnndm_task,
}
UNITS = {"perplexity": "tokens", "lambada": "tokens", "multiple_choice": "tokens", "cnndm": "articles"}
