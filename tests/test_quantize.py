"""Weight-only int8 and bfloat16 decoding: the formats against NumPy written here, the kernels on odd shapes, logits
against the float64 reference run on the same quantized weights, the native and XLA paths, the saved layout, every
path that decodes, and the refusals."""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
import gpt2tf.formats.load
import gpt2tf.formats.openai
from gpt2tf.decode import generate as sample
from gpt2tf.errors import GPT2TFError
from gpt2tf.formats import quantization, quantized
from gpt2tf.kernels import native

from helpers import compiled_product, default_runner, needs_kernel
from reference import read_openai_checkpoint, reference_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 198, 50256, 40, 1101]


# ---- the formats, written out independently in NumPy ------------------------------------------------------------


def numpy_int8(w):
    """(q, scale) per row of the last axis: scale = max|row| / 127 in float32, q = rint(row / scale) (half to even)."""
    w = np.asarray(w, np.float32)
    scale = (np.abs(w).max(axis=-1) / np.float32(127)).astype(np.float32)
    q = np.rint(w / np.where(scale > 0, scale, np.float32(1))[..., None])
    return np.clip(q, -127, 127).astype(np.int8), scale


def numpy_bf16(w):
    return np.asarray(w, np.float32).astype(ml_dtypes.bfloat16)


def quantized_params(params, weight_format):
    """The float64 weights a quantized model stands for: OpenAI's tensors with the projections (per output, i.e. per
    column of OpenAI's [1, n_in, n_out]) and wte (per token row) quantized and dequantized."""
    out = {}
    for key, value in params.items():
        if key == "model/wte" or key.endswith("/w"):
            rows = value[0].T if key.endswith("/w") else value  # [n_out, n_in] / [n_vocab, n_embd]
            if weight_format == "int8":
                q, scale = numpy_int8(rows)
                rows = q.astype(np.float64) * scale.astype(np.float64)[:, None]
            else:
                rows = numpy_bf16(rows).astype(np.float64)
            value = rows.T[None] if key.endswith("/w") else rows
        out[key] = value
    return out


def relative_rms(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))


def test_int8_quantization_is_numpys_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.02, size=(37, 53)).astype(np.float32)
    w[3] = 0  # a zero row: scale 0, q 0
    w[5] = 1e-30  # tiny values
    w[7, :4] = [127, -63.5, 0.5, 1.5]  # exact halves: ties to even
    w[9] = -2.0  # every value at the limit
    q, scale = quantization.quantize_int8(w)
    want_q, want_scale = numpy_int8(w)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(scale, want_scale)
    assert q.min() >= -127 and scale[3] == 0 and (q[3] == 0).all()
    assert list(q[7, :4]) == [127, -64, 0, 2]
    error = np.abs(quantization.dequantize(q, scale).numpy() - w)
    assert (error <= want_scale[:, None] / 2 * (1 + 1e-6)).all()  # half a step at most
    monkeypatch.setattr(quantization, "QUANTIZE_BLOCK_FLOATS", 200)  # a big tensor, quantized a block of rows at a time
    q, scale = quantization.quantize_int8(w.reshape(1, 37, 53))
    np.testing.assert_array_equal(q[0], want_q)
    np.testing.assert_array_equal(scale[0], want_scale)
    q, scale = quantization.encode_projection(w.T[None], "int8")  # OpenAI's [1, n_in, n_out], quantized per column
    np.testing.assert_array_equal(q[0], want_q)
    np.testing.assert_array_equal(scale[0], want_scale)
    w[11, 5] = np.nan
    assert np.isnan(quantization.quantize_int8(w)[1][11]) and np.isnan(
        quantization.encode_projection(w.T[None], "int8")[1][0, 11]
    )


def test_bf16_rounds_to_nearest_even_as_ml_dtypes_does():
    rng = np.random.default_rng(1)
    w = np.concatenate(
        [
            rng.normal(size=4000).astype(np.float32),
            np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.0e38], np.float32),
        ]
    )  # halves, large
    stored, scale = quantization.encode(w, "bf16")
    assert scale is None
    np.testing.assert_array_equal(np.asarray(stored).view(np.uint16), numpy_bf16(w).view(np.uint16))
    assert tf.convert_to_tensor(stored).dtype == tf.bfloat16
    projection, _ = quantization.encode_projection(w[:4000].reshape(1, 40, 100), "bf16")
    np.testing.assert_array_equal(
        projection[0].view(np.uint16), numpy_bf16(w[:4000].reshape(40, 100).T).view(np.uint16)
    )
    assert relative_rms(quantization.dequantize(stored).numpy()[:4000], w[:4000]) < 2**-8


def test_a_loaded_model_holds_exactly_the_quantized_checkpoint(tiny_model_dir):
    params = read_openai_checkpoint(str(tiny_model_dir / "model.ckpt"))
    model = gpt2tf.load_model(tiny_model_dir, weights="int8")
    q, scale = numpy_int8(params["model/h1/mlp/c_fc/w"][0].T.astype(np.float32))
    layer = model.h[1].mlp.c_fc
    np.testing.assert_array_equal(layer.w.numpy()[0], q)
    np.testing.assert_array_equal(layer.w_scale.numpy()[0], scale)
    np.testing.assert_array_equal(model.wte.numpy(), numpy_int8(params["model/wte"].astype(np.float32))[0])
    assert model.h[0].attn.c_attn.b.dtype == "float32" and model.wpe.dtype == "float32"
    bf16 = gpt2tf.load_model(tiny_model_dir, weights="bf16")
    np.testing.assert_array_equal(
        bf16.h[0].attn.c_proj.w.numpy()[0].view(np.uint16),
        numpy_bf16(params["model/h0/attn/c_proj/w"][0].T).view(np.uint16),
    )


# ---- the kernels --------------------------------------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("weight_format", ["int8", "bf16"])
@pytest.mark.parametrize(
    "m,k,n",
    [
        (1, 7, 1),
        (1, 100, 70),
        (1, 1001, 333),
        (1, 768, 2304),
        (2, 17, 5),
        (3, 33, 100),
        (4, 100, 70),
        (5, 16, 3),
        (6, 40, 257),
        (7, 33, 13),
        (8, 768, 300),
        (11, 40, 257),
        (16, 600, 70),
        (13, 3072, 65),
    ],
)
def test_products_with_stored_weights_match_numpy(weight_format, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = rng.normal(scale=0.05, size=(n, k)).astype(np.float32)
    if weight_format == "int8":
        q, scale = numpy_int8(w)
        stored, dequantized = tf.constant(q), q.astype(np.float64) * scale.astype(np.float64)[:, None]
        scale = tf.constant(scale)
    else:
        stored = tf.constant(numpy_bf16(w).astype(np.float32), tf.bfloat16)
        dequantized, scale = numpy_bf16(w).astype(np.float64), None
    product = compiled_product()
    got = product(tf.constant(x), stored, scale).numpy()
    target = "gpt2tf_matmul_nt_i8" if weight_format == "int8" else "gpt2tf_matmul_nt_bf16"
    assert target in product.experimental_get_compiler_ir(tf.constant(x), stored, scale)(stage="hlo")
    want = x.astype(np.float64) @ dequantized.T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k) * np.abs(dequantized).max())


# ---- the model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_format", ["int8", "bf16"])
def test_logits_are_the_quantized_models_and_within_its_own_error_of_float32(small_model_dir, weight_format):
    params = read_openai_checkpoint(str(small_model_dir / "model.ckpt"))
    exact = reference_logits(params, 2, TOKENS)
    own = reference_logits(quantized_params(params, weight_format), 2, TOKENS)  # the format's own logits
    model = gpt2tf.load_model(small_model_dir, weights=weight_format)
    got = model(tf.constant([TOKENS])).numpy()[0]
    # This is the quantized model computed exactly (to float32 rounding) ...
    np.testing.assert_allclose(got, own, rtol=1e-4, atol=1e-4 * np.abs(own).max())
    # ... so its error against float32 is the format's own error.
    format_error = relative_rms(own, exact)
    assert 0 < relative_rms(got, exact) <= 1.15 * format_error
    assert format_error < (0.05 if weight_format == "int8" else 0.01)


@pytest.mark.parametrize("weight_format", ["int8", "bf16"])
def test_decoding_with_the_native_kernels_and_with_xla_gives_the_same_tokens(
    small_model_dir, weight_format, monkeypatch
):
    model = gpt2tf.load_model(small_model_dir, weights=weight_format)
    prompts = [TOKENS[:3], TOKENS[5:7], TOKENS[:9]]
    kwargs = dict(length=24, temperature=0, batch_size=3, stop_at_eos=False)
    first = sample.generate(model, prompts, **kwargs)
    compiled = default_runner(model)
    if native.available():
        assert compiled.use_native
        hlo = compiled.head.experimental_get_compiler_ir(tf.zeros([3, 1, 16]))(stage="hlo")
        assert ("gpt2tf_matmul_nt_i8" if weight_format == "int8" else "gpt2tf_matmul_nt_bf16") in hlo
    # Beyond the kernel's 16 rows (and in every prefill) XLA computes with the stored weights, the kernel on or off.
    many = dict(length=6, temperature=0, batch_size=17, stop_at_eos=False)
    assert sample.generate(model, [TOKENS[:3]] * 17, **many) == [first[0][:6]] * 17
    monkeypatch.setenv("GPT2TF_NATIVE", "0")
    assert not default_runner(model).use_native  # GPT2TF_NATIVE=0: the engine's default is TensorFlow's ops
    assert sample.generate(model, prompts, **kwargs) == first
    assert sample.generate(model, [TOKENS[:3]] * 17, **many) == [first[0][:6]] * 17


def test_quantized_weights_take_a_quarter_or_half_of_the_bytes(small_model_dir):
    def nbytes(model, dtype=None):
        return sum(
            int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
            for v in model.weights
            if dtype is None or v.dtype == dtype
        )

    full = gpt2tf.load_model(small_model_dir)
    int8 = gpt2tf.load_model(small_model_dir, weights="int8")
    bf16 = gpt2tf.load_model(small_model_dir, weights="bf16")
    stored = 50257 * 16 + 2 * (16 * 48 + 16 * 16 + 2 * 16 * 64)  # wte and the projections
    assert nbytes(full) - nbytes(int8) == stored * 3 - (50257 + 2 * (48 + 16 + 64 + 16)) * 4  # minus the scales
    assert nbytes(full) - nbytes(bf16) == stored * 2
    assert nbytes(int8, "float32") < 0.2 * nbytes(full)  # no float32 copy of a stored weight anywhere


def test_loading_int8_grows_the_process_by_little_more_than_the_int8_weights(tmp_path):
    """The resident memory a load adds, in fresh processes: the float32 temporaries of quantizing must not stay."""
    from gpt2tf.hparams import HParams

    model_dir = tmp_path / "model"
    gpt2tf.write_synthetic_checkpoint(model_dir, HParams(n_vocab=1000, n_ctx=64, n_embd=512, n_head=8, n_layer=8))
    # VmHWM, the process's peak resident memory (ru_maxrss would carry pytest's own over the exec).
    code = (
        # TensorFlow (and the formats) imported before measuring
        "import sys, gpt2tf, gpt2tf.formats.load, gpt2tf.formats.openai, gpt2tf.formats.quantized\n"
        "peak = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "before = peak()\n"
        "model = gpt2tf.load_model(sys.argv[1], weights=sys.argv[2])\n"
        "print((peak() - before) * 1024)\n"
    )

    def grows(weights):
        out = subprocess.run(
            [sys.executable, "-c", code, str(model_dir), weights],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        return int(out.stdout.split()[-1])

    float_bytes = 4 * (1000 * 512 + 8 * 12 * 512 * 512)  # wte and the projections: 103 MB (int8: 26 MB)
    full, int8 = grows("float32"), grows("int8")
    assert full > 0.9 * float_bytes
    # Loading int8 holds at least half of the float32 weights' bytes less than loading float32 (a load that kept
    # the float32 tensors it quantized would hold more).
    assert int8 < full - 0.5 * float_bytes, (full, int8)


def test_saved_quantized_dir_loads_the_same_model_without_the_float_file(small_model_dir, tmp_path):
    model = gpt2tf.load_model(small_model_dir, weights="int8")
    out = quantized.save_quantized(model, tmp_path / "int8")
    assert sorted(p.name for p in out.iterdir()) == [
        "encoder.json",
        "hparams.json",
        "quantized.json",
        "vocab.bpe",
        "weights.data-00000-of-00001",
        "weights.index",
    ]
    assert json.loads((out / "quantized.json").read_text())["weights"] == "int8"
    again = gpt2tf.load_model(out)
    assert again.weight_format == "int8"
    for a, b in zip(model.weights, again.weights):
        assert a.path == b.path and a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    reader = tf.train.load_checkpoint(str(out / "weights"))  # TensorFlow's own reader: the documented layout
    assert reader.get_variable_to_dtype_map()["model/wte"] == tf.int8
    kwargs = dict(length=8, temperature=0.8, top_k=40, seed=5)
    assert sample.generate(again, [TOKENS[:4]], **kwargs) == sample.generate(model, [TOKENS[:4]], **kwargs)
    with pytest.raises(GPT2TFError, match="holds int8 weights, saved for decoding: load it with weights='int8'"):
        gpt2tf.load_model(out, weights="bf16")
    with pytest.raises(GPT2TFError, match="holds quantized weights saved for decoding"):
        gpt2tf.formats.load.model_hparams(out)  # what fine-tuning, export and convert read first


def test_hugging_face_and_h5_weights_quantize_the_same(small_model_dir, tmp_path):
    from gpt2tf.formats.load import load_h5_model

    want = gpt2tf.load_model(small_model_dir, weights="int8")
    gpt2tf.save_hf_checkpoint(gpt2tf.load_model(small_model_dir), tmp_path / "hf")
    gpt2tf.write_h5_weights(tmp_path / "w.h5", gpt2tf.load_model(small_model_dir))
    for got in (
        gpt2tf.load_model(tmp_path / "hf", weights="int8"),
        load_h5_model(small_model_dir, tmp_path / "w.h5", weights="int8"),
    ):
        assert got.weight_format == "int8"
        for a, b in zip(want.weights, got.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_saved_dir_refuses_mixed_precision_and_a_bad_destination(small_model_dir, tmp_path):
    model = gpt2tf.load_model(small_model_dir, weights="bf16")
    out = quantized.save_quantized(model, tmp_path / "bf16")
    with pytest.raises(GPT2TFError, match="bf16 weights compute in float32: drop the mixed precision"):
        gpt2tf.load_model(out, dtype="mixed_float16")
    assert gpt2tf.load_model(out / "weights").weight_format == "bf16"  # the bundle's prefix names the dir too
    from gpt2tf import export

    with pytest.raises(GPT2TFError, match="holds weights quantized for decoding: the export holds float32"):
        export.check(export.ExportConfig(model_dir=str(out), export_dir=str(tmp_path / "exported")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(GPT2TFError, match="is a file: give a new dir for the quantized model"):
        quantized.save_quantized(model, tmp_path / "file")
    with pytest.raises(GPT2TFError, match="exists and is not a quantized model dir"):
        quantized.save_quantized(model, small_model_dir)
    (out / "quantized.json").write_text('{"format": "gpt2tf-quantized", "version": "2", "weights": "bf16"}')
    with pytest.raises(GPT2TFError, match="quantized.json is damaged"):
        gpt2tf.load_model(out)


# ---- every path that decodes, and the refusals -------------------------------------------------------------------


def run(script, *args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_inference_with_int8_streams_the_tokens_generate_gives_and_saves_the_quantized_dir(small_model_dir, tmp_path):
    out = tmp_path / "saved"
    result = run(
        "inference.py",
        "--model_dir",
        str(small_model_dir),
        "--weights",
        "int8",
        "--starter",
        "Hello",
        "--output_length",
        "12",
        "--greedy",
        "--no_eos_stop",
        "--save_quantized",
        str(out),
        "--output",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    tokens = json.loads(result.stdout)["tokens"]
    model = gpt2tf.load_model(small_model_dir, weights="int8")
    enc = gpt2tf.get_encoder()
    assert tokens == sample.generate(model, [enc.encode("Hello")], length=12, temperature=0, stop_at_eos=False)[0]
    assert quantized.quantized_format(out) == "int8"
    again = gpt2tf.load_model(out)  # what inference.py --model_dir OUT loads
    assert sample.generate(again, [enc.encode("Hello")], length=12, temperature=0, stop_at_eos=False)[0] == tokens


def test_the_server_decodes_and_streams_with_int8_weights(small_model_dir):
    import httpx

    from gpt2tf.serve.app import create_app
    from gpt2tf.serve.command import ServeConfig

    from helpers import Running

    running = Running(create_app(ServeConfig(model_dir=str(small_model_dir), weights="int8", max_batch=2)))
    try:
        body = {"prompt": "She picked up the sword", "max_tokens": 10, "temperature": 0}
        text = httpx.post(running.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        model = gpt2tf.load_model(small_model_dir, weights="int8")
        enc = gpt2tf.get_encoder()
        want = enc.decode(sample.generate(model, [enc.encode(body["prompt"])], length=10, temperature=0)[0])
        assert text == want
        with httpx.stream("POST", running.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in chunks) == want
    finally:
        running.stop()


def test_a_lora_run_dir_decodes_with_int8(tmp_path, small_model_dir):
    from gpt2tf import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40)))
    run_dir = train.finetune(
        train.configure(
            dict(
                model_dir=str(small_model_dir),
                dataset_path=str(corpus),
                output_dir=str(tmp_path / "run"),
                length=16,
                batch_size=2,
                num_epoch=1,
                steps_per_epoch=2,
                max_steps=2,
                save_every=0,
                log_every=1,
                lora_rank=2,
                base_lr=1e-2,
                cache_dir=str(tmp_path / "cache"),
                xla=False,
            )
        )
    )
    params = read_openai_checkpoint(str(gpt2tf.formats.openai.resolve_checkpoint(run_dir)[1]))
    model = gpt2tf.load_model(run_dir, weights="int8")  # the run's weights, adapters merged, quantized
    q, _ = numpy_int8(params["model/h0/attn/c_attn/w"][0].T.astype(np.float32))
    np.testing.assert_array_equal(model.h[0].attn.c_attn.w.numpy()[0], q)
    own = reference_logits(quantized_params(params, "int8"), 2, TOKENS[:6])
    np.testing.assert_allclose(
        model(tf.constant([TOKENS[:6]])).numpy()[0], own, rtol=1e-4, atol=1e-4 * np.abs(own).max()
    )
    # Decoding (the engine, the kernels) gives the reference's greedy next token.
    assert sample.generate(model, [TOKENS[:6]], length=1, temperature=0)[0] == [int(np.argmax(own[-1]))]


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("inference.py", ["--weights", "int4"], "argument --weights: invalid choice: 'int4'"),
        (
            "finetune.py",
            ["--weights", "int8", "--dataset_path", "x.txt"],
            "--weights is for decoding (inference.py, serve.py): fine-tuning trains float32 weights",
        ),
        ("inference.py", ["--weights", "int8", "--precision", "mixed_float16"], "int8 weights compute in float32"),
        ("inference.py", ["--save_quantized", "out"], "--save_quantized saves int8 or bf16 weights: give --weights"),
        ("inference.py", ["--weights", "int8", "--save_quantized", "README.md"], "README.md is a file: give a new dir"),
    ],
)
def test_bad_combinations_are_one_line_errors(small_model_dir, script, args, message):
    result = run(script, "--model_dir", str(small_model_dir), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_quantized_model_cannot_be_saved_as_a_float_checkpoint_or_built_at_random(small_model_dir, tmp_path):
    model = gpt2tf.load_model(small_model_dir, weights="int8")
    with pytest.raises(GPT2TFError, match="holds int8 weights for decoding"):
        gpt2tf.save_openai_checkpoint(model, tmp_path / "m")
    with pytest.raises(GPT2TFError, match="holds int8 weights for decoding"):
        gpt2tf.save_hf_checkpoint(model, tmp_path / "h")
    with pytest.raises(GPT2TFError, match="only made by quantizing a checkpoint"):
        gpt2tf.GPT2(model.hparams, weight_format="int8")
    with pytest.raises(GPT2TFError, match="weights must be one of float32, int8, bf16"):
        gpt2tf.load_model(small_model_dir, weights="fp8")
    with pytest.raises(GPT2TFError, match="this model holds float32 weights"):
        quantized.save_quantized(gpt2tf.load_model(small_model_dir), tmp_path / "q")
