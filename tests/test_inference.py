"""inference.py end to end: flags, output formats, prompts files, interactive mode, and one-line errors."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gpt2tf
from gpt2tf.decode import generate as sample
from gpt2tf.errors import GPT2TFError
from gpt2tf.inference import InferenceConfig, run, unescape

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(small_model_dir):
    return small_model_dir


def _cli(*args, stdin=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the script quiets TF itself
    return subprocess.run(
        [sys.executable, str(ROOT / "inference.py"), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _run(**kwargs):
    out = io.StringIO()
    run(InferenceConfig(**kwargs), out=out)
    return out.getvalue()


def test_jsonl_output_matches_the_library(model_dir):
    result = _cli(
        "--model_dir",
        model_dir,
        "--starter",
        "She picked up the sword",
        "--top_k",
        "40",
        "--output_length",
        "12",
        "--nsamples",
        "3",
        "--batch_size",
        "2",
        "--seed",
        "42",
        "--no_eos_stop",
        "--output",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # TensorFlow's start-up chatter is kept off the terminal
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1, 2] and {r["seed"] for r in rows} == {42}
    model = gpt2tf.load_model(model_dir)
    enc = gpt2tf.get_encoder()
    want = sample.generate(
        model, [enc.encode("She picked up the sword")], length=12, top_k=40, seed=42, nsamples=3, stop_at_eos=False
    )
    assert [r["tokens"] for r in rows] == want
    assert [r["text"] for r in rows] == [enc.decode(ids) for ids in want]


def test_the_decoding_control_flags_match_the_library(model_dir):
    args = ["--model_dir", model_dir, "--starter", "She picked up the sword", "--output_length", "12", "--seed", "4"]
    controls = ["--no_repeat_ngram_size", "2", "--presence_penalty", "0.5", "--frequency_penalty", "1"]
    controls += ["--logit_bias", '{"13": -100, "262": 2.5}', "--bad_words", "the", "--bad_words", "sword\\n"]
    controls += ["--min_p", "0.05", "--typical_p", "0.95", "--top_k", "0", "--output", "jsonl"]
    result = _cli(*args, *controls)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)["tokens"]
    model = gpt2tf.load_model(model_dir)
    enc = gpt2tf.get_encoder()
    want = sample.generate(
        model,
        [enc.encode("She picked up the sword")],
        length=12,
        seed=4,
        no_repeat_ngram_size=2,
        presence_penalty=0.5,
        frequency_penalty=1.0,
        logit_bias={13: -100, 262: 2.5},
        bad_words=["the", "sword\n"],
        min_p=0.05,
        typical_p=0.95,
    )[0]
    assert got == want


def test_plain_output_streams_each_sample_with_a_header(model_dir):
    text = _run(model_dir=str(model_dir), starter="Hello", output_length=8, nsamples=2, seed=1, no_eos_stop=True)
    assert text.count("SAMPLE 1") == 1 and text.count("SAMPLE 2") == 1
    assert (
        _run(model_dir=str(model_dir), starter="Hello", output_length=8, nsamples=2, seed=1, no_eos_stop=True) == text
    )  # same seed, same text


def test_greedy_nucleus_and_unconditional(model_dir):
    greedy = _run(
        model_dir=str(model_dir), starter="Hi", output_length=6, greedy=True, output="jsonl", no_eos_stop=True
    )
    model = gpt2tf.load_model(model_dir)
    enc = gpt2tf.get_encoder()
    assert (
        json.loads(greedy)["tokens"]
        == sample.generate(model, [enc.encode("Hi")], length=6, temperature=0, stop_at_eos=False)[0]
    )
    assert InferenceConfig(nucleus=True).sampler() == sample.SamplerConfig(top_k=0, top_p=0.9)
    assert InferenceConfig(nucleus=True, top_p=0.5, top_k=5).sampler() == sample.SamplerConfig(top_k=5, top_p=0.5)
    assert InferenceConfig().sampler() == sample.SamplerConfig(top_k=40)
    row = json.loads(_run(model_dir=str(model_dir), output_length=4, seed=3, output="jsonl", no_eos_stop=True))
    assert row["prompt"] == "" and len(row["tokens"]) == 4


def test_prompts_file_and_stop(model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("First prompt\n\nSecond\\nprompt\n")
    rows = [
        json.loads(line)
        for line in _run(
            model_dir=str(model_dir),
            prompts_file=str(tmp_path / "prompts.txt"),
            output_length=10,
            seed=4,
            output="jsonl",
            no_eos_stop=True,
        ).splitlines()
    ]
    assert [r["prompt"] for r in rows] == ["First prompt", "Second\nprompt"]
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "First prompt"}) + "\n")
    stop = rows[0]["text"][5:7]
    cut = json.loads(
        _run(
            model_dir=str(model_dir),
            prompts_file=str(tmp_path / "prompts.jsonl"),
            output_length=10,
            seed=4,
            output="jsonl",
            no_eos_stop=True,
            stop=[stop],
        )
    )
    assert cut["text"] == rows[0]["text"][: rows[0]["text"].find(stop)]


def test_interactive_mode(model_dir):
    result = _cli(
        "--model_dir", model_dir, "--interactive", "--output_length", "5", "--seed", "1", stdin="Hello there\n\nAgain\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Model prompt >>>") == 4  # three lines read, then end of input
    assert "Prompt should not be empty!" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top_p", "0"], "top_p must be in (0, 1]"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--top_k", "-3"], "top_k must be an integer >= 0"),
        (["--output_length", "100"], "the model's context of 64"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_dir, args, message):
    result = _cli("--model_dir", model_dir, "--starter", "x", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_model_dir_and_prompts_file(tmp_path):
    with pytest.raises(GPT2TFError, match="does not exist"):
        _run(model_dir=str(tmp_path / "none"))
    with pytest.raises(GPT2TFError, match="prompts file .* does not exist"):
        _run(model_dir=str(tmp_path), prompts_file=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(GPT2TFError, match="holds no prompts"):
        _run(model_dir=str(tmp_path), prompts_file=str(tmp_path / "empty.txt"))
    with pytest.raises(GPT2TFError, match="only one of"):
        _run(model_dir=str(tmp_path), starter="a", interactive=True)


def test_truncate_prompt_flag(model_dir):
    long = " ".join(["word"] * 80)
    with pytest.raises(GPT2TFError, match="left-truncation"):
        _run(model_dir=str(model_dir), starter=long, output_length=10)
    row = json.loads(
        _run(
            model_dir=str(model_dir),
            starter=long,
            output_length=10,
            truncate_prompt=True,
            output="jsonl",
            no_eos_stop=True,
            seed=1,
        )
    )
    assert len(row["tokens"]) == 10


def test_unescape():
    assert unescape("\\n\\n") == "\n\n" and unescape("tab\\there") == "tab\there" and unescape("café") == "café"


# ---- hostile input (issue 12) ------------------------------------------------------------------------------------


def test_backslashes_that_are_not_escapes_stay_as_typed(model_dir, tmp_path):
    assert unescape(r"C:\Users\bob\data.txt") == r"C:\Users\bob\data.txt"
    assert unescape("\\") == "\\" and unescape(r"a\\n") == r"a\n" and unescape(r"\r\t") == "\r\t"
    (tmp_path / "prompts.txt").write_text("C:\\Users\\bob\\file\n")
    rows = _run(
        model_dir=str(model_dir),
        prompts_file=str(tmp_path / "prompts.txt"),
        output_length=2,
        seed=1,
        output="jsonl",
        stop=["\\"],
    )
    assert json.loads(rows)["prompt"] == "C:\\Users\\bob\\file"


def test_a_prompts_file_with_a_byte_order_mark(model_dir, tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffHello there\n".encode("utf-8"))
    assert (
        json.loads(
            _run(
                model_dir=str(model_dir),
                prompts_file=str(tmp_path / "bom.txt"),
                output_length=2,
                seed=1,
                output="jsonl",
            )
        )["prompt"]
        == "Hello there"
    )


@pytest.mark.parametrize("value", ["null", "42", '["a"]', '{"x": 1}'])
def test_jsonl_prompts_must_be_strings(tmp_path, value):
    (tmp_path / "p.jsonl").write_text(f'{{"prompt": "fine"}}\n{{"prompt": {value}}}\n')
    with pytest.raises(GPT2TFError, match=rf"p.jsonl:2: \"prompt\" must be a string, got {re.escape(value)}"):
        _run(model_dir=str(tmp_path), prompts_file=str(tmp_path / "p.jsonl"))


def test_a_model_without_gpt2s_vocabulary_is_refused(tmp_path, tiny_hparams):
    gpt2tf.write_synthetic_checkpoint(tmp_path / "m", tiny_hparams.replace(n_vocab=1000))
    result = _cli("--model_dir", tmp_path / "m", "--starter", "hi")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: the model has n_vocab 1000, fewer than GPT-2's 50257 token ids: it was "
        "not trained with GPT-2's tokenizer, so its output would be garbage"
    )


def test_an_over_long_prompt_in_interactive_mode_is_reported_and_asked_again(model_dir):
    result = _cli(
        "--model_dir",
        model_dir,
        "--interactive",
        "--output_length",
        "5",
        "--seed",
        "1",
        stdin=" ".join(["word"] * 80) + "\nHello\n",
    )
    assert result.returncode == 0, result.stderr
    assert "error: prompt 0 has" in result.stdout and result.stdout.count("Model prompt >>>") == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top_k", "x"], "argument --top_k: invalid int value: 'x'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--seed", "4294967296"], "seed must be a whole number from 0 to 2147483647"),
        (["--presence_penalty", "3"], "presence_penalty must be from -2 to 2"),
        (["--logit_bias", "{50256: -100}"], "--logit_bias must be a JSON object"),
        (["--logit_bias", '{"50256": -200}'], "logit_bias values must be numbers from -100 to 100"),
        (["--bad_words", ""], "bad_words holds an empty string"),
        (["--typical_p", "0"], "typical_p must be in (0, 1]"),
        (["--no_repeat_ngram_size", "-1"], "no_repeat_ngram_size must be an integer >= 0"),
    ],
)
def test_flag_errors_are_one_line_before_tensorflow_loads(args, message):
    code = (
        "import sys, atexit; atexit.register(lambda: print('TF' if 'tensorflow' in sys.modules else 'no TF', "
        "file=sys.stderr)); from gpt2tf.cli import run_script; sys.argv = ['inference.py'] + sys.argv[1:]; "
        "run_script('generate')"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    error, imported = result.stderr.strip().splitlines()
    assert error.startswith("error: ") and message in error and imported == "no TF"  # before TensorFlow's seconds


def test_ctrl_c_during_start_up_is_one_line(model_dir):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "inference.py"), "--model_dir", str(model_dir), "--starter", "hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    time.sleep(1.0)  # inside TensorFlow's import
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip() == "interrupted"


def test_shards_together_give_the_unsharded_output_row_for_row(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(5)))
    common = dict(
        model_dir=str(model_dir),
        prompts_file=str(prompts),
        output_length=6,
        nsamples=2,
        top_k=5,
        seed=11,
        output="jsonl",
        no_eos_stop=True,
        batch_size=3,
    )
    whole = [json.loads(line) for line in _run(**common).splitlines()]
    assert [(r["index"], r["sample"]) for r in whole] == [(i, j) for i in range(5) for j in range(2)]
    parts = [json.loads(line) for shard in ("0/3", "1/3", "2/3") for line in _run(shard=shard, **common).splitlines()]
    assert sorted(parts, key=lambda r: (r["index"], r["sample"])) == whole
    assert _run(shard="6/7", **common) == ""  # more shards than prompts: an empty one


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shard", "3/3", "--prompts_file", "p.txt"], "--shard must be I/N with 0 <= I < N"),
        (["--shard", "x", "--prompts_file", "p.txt"], "--shard must be I/N"),
        (["--shard", "0/2", "--starter", "hi"], "--shard splits a --prompts_file"),
    ],
)
def test_bad_shards_are_one_line(model_dir, args, message):
    result = _cli("--model_dir", model_dir, *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
