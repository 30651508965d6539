"""Restore and write-back of OpenAI's checkpoint layout, and every way a model dir can be wrong."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf.errors import GPT2TFError
from gpt2tf.formats.openai import openai_tensor_shapes
from gpt2tf.formats.tensors import checkpoint_key

OPENAI_FILES = [
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "vocab.bpe",
]


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    return path


def _error(path, **kwargs):
    with pytest.raises(GPT2TFError) as info:
        gpt2tf.load_model(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_synthetic_checkpoint_has_openai_layout(tiny_model_dir, tiny_hparams):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == OPENAI_FILES
    assert (tiny_model_dir / "checkpoint").read_text().startswith('model_checkpoint_path: "model.ckpt"\n')
    reader = tf.train.load_checkpoint(str(tiny_model_dir / "model.ckpt"))
    shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    assert shapes == openai_tensor_shapes(tiny_hparams)
    assert set(reader.get_variable_to_dtype_map().values()) == {tf.float32}
    for name in shapes:  # random values everywhere: a loader that skips a tensor cannot pass the logits tests
        value = reader.get_tensor(name)
        assert np.unique(value).size > value.size // 2, name
    data = (tiny_model_dir / "model.ckpt.data-00000-of-00001").stat().st_size
    assert data == 4 * tiny_hparams.num_parameters


def test_restore_is_exact(tiny_model_dir, tiny_model):
    reader = tf.train.load_checkpoint(str(tiny_model_dir / "model.ckpt"))
    for variable in tiny_model.weights:
        want = reader.get_tensor(checkpoint_key(variable))
        if checkpoint_key(variable).endswith("/w"):  # projections are held transposed: [1, n_out, n_in]
            want = want.transpose(0, 2, 1)
        np.testing.assert_array_equal(variable.numpy(), want)


def test_round_trip_is_bit_exact(tmp_path, tiny_model_dir, tiny_model):
    out = tmp_path / "copy"
    gpt2tf.save_openai_checkpoint(tiny_model, out)
    assert sorted(p.name for p in out.iterdir()) == OPENAI_FILES
    for name in OPENAI_FILES:
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    again = gpt2tf.load_model(out)
    for a, b in zip(again.weights, tiny_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_write_back_into_an_existing_dir_replaces_cleanly(model_dir, tiny_hparams):
    model = gpt2tf.GPT2(tiny_hparams)  # fresh random weights, different from the dir's
    gpt2tf.save_openai_checkpoint(model, model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == OPENAI_FILES  # no temp files left behind
    np.testing.assert_array_equal(gpt2tf.load_model(model_dir).weights[0].numpy(), model.weights[0].numpy())


def test_write_back_after_fine_tuning_changes_weights(tmp_path, tiny_model):
    model = gpt2tf.GPT2(tiny_model.hparams)
    for a, b in zip(model.weights, tiny_model.weights):
        a.assign(b + 1.0)
    gpt2tf.save_openai_checkpoint(model, tmp_path / "tuned")
    reader = tf.train.load_checkpoint(str(tmp_path / "tuned" / "model.ckpt"))
    np.testing.assert_array_equal(reader.get_tensor("model/ln_f/g"), tiny_model.ln_f.g.numpy() + 1.0)


def test_unwritable_destination(tmp_path, tiny_model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GPT2TFError, match="cannot write model dir"):
        gpt2tf.save_openai_checkpoint(tiny_model, blocker / "sub")


def test_load_from_prefix_and_moved_dir(model_dir, tiny_hparams):
    assert gpt2tf.load_model(model_dir / "model.ckpt").hparams == tiny_hparams
    # A state file written elsewhere with an absolute path still works once the dir has moved.
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "/somewhere/else/model.ckpt"\n')
    assert gpt2tf.load_model(model_dir).hparams == tiny_hparams
    (model_dir / "checkpoint").unlink()  # no state file, but OpenAI's prefix name is there
    assert gpt2tf.load_model(model_dir).hparams == tiny_hparams


def test_missing_path(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")


def test_dir_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    message = _error(tmp_path)
    assert "is not a GPT-2 model dir" in message and "model.ckpt.index" in message


def test_an_unfinished_download_and_a_quantized_dir_without_its_marker_are_named(tmp_path):
    """`download_model.py 355M` cut off leaves an empty models/355M: the error says the command that resumes it. A
    quantized dir whose quantized.json is gone is named as one (not 'not a GPT-2 model dir')."""
    empty = tmp_path / "models" / "355M"
    empty.mkdir(parents=True)
    message = _error(empty)
    assert "holds no checkpoint (it is empty)" in message
    assert f"python download_model.py 355M --models_dir {empty.parent}" in message
    quantized = tmp_path / "q"
    quantized.mkdir()
    (quantized / "weights.index").write_bytes(b"x")
    (quantized / "weights.data-00000-of-00001").write_bytes(b"x")
    assert "like a dir of quantized weights" in _error(quantized) and "quantized.json" in _error(quantized)


def test_file_that_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    assert "is not a model dir or a checkpoint prefix" in _error(tmp_path / "weights.bin")


def test_missing_hparams(model_dir):
    (model_dir / "hparams.json").unlink()
    assert "no hparams.json" in _error(model_dir)


def test_state_file_names_missing_checkpoint(model_dir):
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-500"\n')
    assert "model.ckpt-500.index is missing" in _error(model_dir)


def test_state_file_without_path(model_dir):
    (model_dir / "checkpoint").write_text("garbage\n")
    assert "no model_checkpoint_path" in _error(model_dir)


def test_missing_data_file(model_dir):
    (model_dir / "model.ckpt.data-00000-of-00001").unlink()
    assert "data-00000-of-00001 is missing" in _error(model_dir)


def test_truncated_data_file(model_dir):
    data = model_dir / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-100])
    message = _error(model_dir)
    assert "truncated or corrupt" in message and "download the model again" in message


def test_corrupt_data_file(model_dir):
    data = model_dir / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64  # same size: only the checksums can tell
    data.write_bytes(bytes(raw))
    message = _error(model_dir)
    assert "corrupt" in message and "download the model again" in message


def test_corrupt_index(model_dir):
    (model_dir / "model.ckpt.index").write_bytes(b"not an index at all" * 10)
    assert "corrupt" in _error(model_dir)


def test_hparams_with_more_layers_names_the_missing_tensors(model_dir, tiny_hparams):
    tiny_hparams.replace(n_layer=3).to_json(model_dir / "hparams.json")
    message = _error(model_dir)
    assert "missing [model/h2/" in message and "(12 in all)" in message


def test_hparams_with_fewer_layers_names_the_unexpected_tensors(model_dir, tiny_hparams):
    tiny_hparams.replace(n_layer=1).to_json(model_dir / "hparams.json")
    assert "unexpected [model/h1/" in _error(model_dir)


def test_hparams_with_other_width_names_the_misshaped_tensors(model_dir, tiny_hparams):
    tiny_hparams.replace(n_vocab=100).to_json(model_dir / "hparams.json")
    assert "mis-shaped [model/wte [101, 16] (hparams.json says [100, 16])]" in _error(model_dir)


def test_nothing_is_assigned_when_the_check_fails(model_dir, tiny_hparams):
    from gpt2tf.formats.openai import restore_weights

    model = gpt2tf.GPT2(tiny_hparams.replace(n_vocab=100))
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(GPT2TFError):
        restore_weights(model, str(model_dir / "model.ckpt"))
    for v, b in zip(model.weights, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_cli_turns_errors_into_one_line_and_exit_2(tmp_path):
    code = f"import gpt2tf, gpt2tf.cli as c, sys; c.run(lambda argv: gpt2tf.load_model({str(tmp_path / 'missing')!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["355M", "774M", "1558M"])
def test_real_size_restore_and_logits(tmp_path, name):
    from gpt2tf.hparams import pretrained

    from reference import read_openai_checkpoint, reference_logits

    hparams = pretrained(name)
    gpt2tf.write_synthetic_checkpoint(tmp_path / name, hparams, seed=7)
    model = gpt2tf.load_model(tmp_path / name)
    tokens = np.array([464, 2068, 7586, 21831, 13, 50256, 0, 1024])
    logits = model(tf.constant([tokens]))[0].numpy()
    del model
    expected = reference_logits(read_openai_checkpoint(str(tmp_path / name / "model.ckpt")), hparams.n_head, tokens)
    assert np.abs(logits - expected).max() <= 1e-4


def test_nan_weights_are_refused(tmp_path, tiny_hparams):
    from gpt2tf.formats.openai import write_model_dir

    tensors = {name: tf.fill(shape, 0.01) for name, shape in openai_tensor_shapes(tiny_hparams).items()}
    tensors["model/h1/mlp/c_fc/w"] = tf.tensor_scatter_nd_update(
        tensors["model/h1/mlp/c_fc/w"], [[0, 3, 5]], [float("nan")]
    )
    write_model_dir(tmp_path / "nan", tiny_hparams, tensors)
    with pytest.raises(GPT2TFError, match=r"tensor model/h1/mlp/c_fc/w in .* holds NaN or infinite values"):
        gpt2tf.load_model(tmp_path / "nan")


def test_a_flipped_bit_names_the_tensor_it_is_in(model_dir):
    shapes = tf.train.load_checkpoint(str(model_dir / "model.ckpt")).get_variable_to_shape_map()
    names = sorted(shapes)  # a bundle stores its tensors in name order
    offset = 0
    for name in names:
        size = 4 * int(np.prod(shapes[name]))
        if name == "model/h1/mlp/c_proj/w":
            break
        offset += size
    data = model_dir / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[offset + 40] ^= 0x01
    data.write_bytes(bytes(raw))
    message = _error(model_dir)
    assert "cannot read tensor model/h1/mlp/c_proj/w" in message and "{{" not in message, message


def test_a_huge_shape_is_refused_before_anything_is_allocated(model_dir, tiny_hparams):
    tiny_hparams.replace(n_ctx=10**9).to_json(model_dir / "hparams.json")
    assert "mis-shaped [model/wpe" in _error(model_dir)
    with pytest.raises(GPT2TFError, match="more than this machine's .* of memory"):
        gpt2tf.GPT2(tiny_hparams.replace(n_ctx=10**9, n_embd=4096))


def test_a_damaged_run_checkpoint_points_to_the_previous_one(tmp_path, tiny_hparams, tiny_model):
    from gpt2tf.formats.bundle import write_bundle
    from gpt2tf.formats.openai import write_state_file
    from gpt2tf.formats.tensors import model_tensors

    run = tmp_path / "run"
    gpt2tf.save_openai_checkpoint(tiny_model, run)
    for step in (1, 2):
        write_bundle(run / f"model.ckpt-{step}", model_tensors(tiny_model))
    write_state_file(run, ["model.ckpt-1", "model.ckpt-2"])
    data = run / "model.ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-8])
    message = _error(run)
    assert f"use the run's previous checkpoint, {run / 'model.ckpt-1'}" in message
    assert "download" not in message
