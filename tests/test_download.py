"""Downloads against a real HTTP server on 127.0.0.1 that serves a small synthetic model and injects faults.

Every test ends in either verified complete files or a one-line `GPT2TFError` with no final file for what failed.
"""

import dataclasses
import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2tf
from gpt2tf import download
from gpt2tf.cli import download_main
from gpt2tf.download import DATA_FILE, MODEL_FILES, DownloadConfig, download_models
from gpt2tf.errors import GPT2TFError

from http_store import PORTAL_PAGE

REPO = Path(__file__).resolve().parents[1]
TINY = gpt2tf.HParams(n_vocab=64, n_ctx=16, n_embd=8, n_head=2, n_layer=2)
HTML_REFUSED = (
    r"sent an HTML page instead of the file \(a wrong --base_url, or a network's sign-in page\); "
    r"check --base_url or sign in to the network, then run the same command again$"
)


def synthetic_files(seed=0):
    """The seven files of a model: the text files well-formed, the rest random bytes, the data file big enough to be
    cut in the middle."""
    rng = random.Random(seed)
    sizes = {name: 300 + 7 * i for i, name in enumerate(MODEL_FILES)}
    sizes[DATA_FILE] = 96 * 1024
    files = {name: rng.randbytes(size) for name, size in sizes.items()}
    files["checkpoint"] = b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    files["hparams.json"] = json.dumps(dataclasses.asdict(gpt2tf.HParams())).encode()
    files["encoder.json"] = json.dumps({f"token{i}": i for i in range(40)}).encode()
    return files


def real_vocab_files(seed=0):
    """Synthetic files, but encoder.json and vocab.bpe are the real ones, so the default known sizes hold."""
    return {
        **synthetic_files(seed),
        **{name: (REPO / "gpt2tf" / "vocab" / name).read_bytes() for name in ("encoder.json", "vocab.bpe")},
    }


def config_for(store, tmp_path, **overrides):
    settings = dict(
        models_dir=str(tmp_path / "models"),
        base_url=store.base_url,
        quiet=True,
        verify=False,
        tries=3,
        backoff_s=0.001,
        timeout_s=5.0,
        chunk_bytes=4096,
        known_sizes={},
    )
    settings.update(overrides)
    return DownloadConfig(**settings)


def assert_complete(model_dir, files):
    assert sorted(os.listdir(model_dir)) == sorted(files)  # no .part left behind
    for name, data in files.items():
        assert (model_dir / name).read_bytes() == data, name


def test_clean_download_gets_all_seven_files(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    [model_dir] = download_models(["124M"], config_for(store, tmp_path))
    assert model_dir == tmp_path / "models" / "124M"
    assert_complete(model_dir, files)
    assert all(rng is None for _, rng in store.requests)
    assert len(store.requests) == 7


def test_dropped_connection_resumes_with_range(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    store.faults[f"/models/124M/{DATA_FILE}"] = ["drop"]
    [model_dir] = download_models(["124M"], config_for(store, tmp_path))
    first, second = store.requests_for("124M", DATA_FILE)
    assert first is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert 0 < resumed_at <= len(files[DATA_FILE]) // 2
    assert_complete(model_dir, files)


def test_stalled_transfer_times_out_and_resumes(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    store.faults[f"/models/124M/{DATA_FILE}"] = ["stall"]
    [model_dir] = download_models(["124M"], config_for(store, tmp_path, timeout_s=0.2))
    assert len(store.requests_for("124M", DATA_FILE)) == 2
    assert_complete(model_dir, files)


def test_server_error_is_retried_with_exponential_backoff(store, tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    files = synthetic_files()
    store.serve_model("124M", files)
    store.faults["/models/124M/hparams.json"] = ["500", "500"]
    [model_dir] = download_models(["124M"], config_for(store, tmp_path, backoff_s=0.5))
    assert delays == [0.5, 1.0]
    assert len(store.requests_for("124M", "hparams.json")) == 3
    assert_complete(model_dir, files)


def test_persistent_server_error_gives_up_after_tries(store, tmp_path):
    store.serve_model("124M", synthetic_files())
    store.faults["/models/124M/checkpoint"] = ["500"] * 10
    with pytest.raises(GPT2TFError, match=r"giving up on .*/124M/checkpoint after 3 tries .*HTTP 500") as err:
        download_models(["124M"], config_for(store, tmp_path))
    assert "\n" not in str(err.value)
    assert len(store.requests) == 3
    assert os.listdir(tmp_path / "models" / "124M") == []


def test_body_shorter_than_content_length_is_an_error_without_final_file(store, tmp_path):
    store.serve_model("124M", synthetic_files())
    store.faults[f"/models/124M/{DATA_FILE}"] = ["short"] * 10
    with pytest.raises(
        GPT2TFError,
        match=r"giving up on .*/124M/model\.ckpt\.data-00000-of-00001 after 3 tries "
        r"without progress \(connection broken at byte 94,208\); run the same",
    ):
        download_models(["124M"], config_for(store, tmp_path))
    assert not (tmp_path / "models" / "124M" / DATA_FILE).exists()
    # All but 100 bytes arrive; requests drops the last, partial 4 KiB chunk of a broken body, so the first try
    # keeps 23 chunks and makes progress, and each resume delivers less than a chunk, which is no progress.
    assert store.requests_for("124M", DATA_FILE) == [None] + ["bytes=94208-"] * 3


def test_size_different_from_known_size_is_an_error_without_final_file(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    known = {"124M": {DATA_FILE: len(files[DATA_FILE]) + 1}}
    with pytest.raises(GPT2TFError, match=r"is 98,304 bytes but this file is known to be 98,305; check --base_url"):
        download_models(["124M"], config_for(store, tmp_path, known_sizes=known))
    model_dir = tmp_path / "models" / "124M"
    assert sorted(os.listdir(model_dir)) == ["checkpoint", "encoder.json", "hparams.json"]


def test_final_file_with_wrong_known_size_is_downloaded_again(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    model_dir = tmp_path / "models" / "124M"
    model_dir.mkdir(parents=True)
    (model_dir / "vocab.bpe").write_bytes(b"truncated by hand")
    download_models(["124M"], config_for(store, tmp_path, known_sizes={"124M": {"vocab.bpe": len(files["vocab.bpe"])}}))
    assert_complete(model_dir, files)


def test_missing_file_is_a_clear_404_error(store, tmp_path):
    files = synthetic_files()
    del files["model.ckpt.meta"]
    store.serve_model("124M", files)
    with pytest.raises(
        GPT2TFError,
        match=r"^http://.*/models/124M/model\.ckpt\.meta not found \(HTTP 404\); "
        r"check the model name and --base_url$",
    ):
        download_models(["124M"], config_for(store, tmp_path))
    assert len(store.requests_for("124M", "model.ckpt.meta")) == 1  # not retried
    assert not (tmp_path / "models" / "124M" / "model.ckpt.meta").exists()


@pytest.mark.parametrize(
    "file_name, fault, served, message",
    [
        ("checkpoint", "html", None, HTML_REFUSED),  # Content-Type: text/html
        (DATA_FILE, None, b"\r\n  <HTML><body>Sign in</body></HTML>", HTML_REFUSED),  # no such header: its first bytes
        ("checkpoint", "endless", None, r"is longer than this file can be \(over 4,096 bytes\); check --base_url$"),
        ("model.ckpt.index", None, bytes(5000), r"is longer than this file can be \(over 4,096 bytes\)"),  # by length
        ("hparams.json", None, b'{"n_vocab": 50257, "n_ct', r"/hparams\.json is not valid JSON; check --base_url$"),
        (
            "hparams.json",
            None,
            b'{"n_vocab": 50257}',
            r"/hparams\.json does not hold n_vocab, n_ctx, n_embd, n_head, "
            r"n_layer as positive integers; check --base_url$",
        ),
        ("checkpoint", None, b"model.ckpt\n", r"/checkpoint has no model_checkpoint_path line; check --base_url$"),
    ],
)
def test_response_that_cannot_be_the_file_is_refused_at_once(store, tmp_path, file_name, fault, served, message):
    files = synthetic_files()
    if served is not None:
        files[file_name] = served
    store.serve_model("124M", files)
    if fault:
        store.faults[f"/models/124M/{file_name}"] = [fault]
    with pytest.raises(GPT2TFError, match=rf"^{store.base_url}/124M/{re.escape(file_name)} ") as err:
        download_models(["124M"], config_for(store, tmp_path, small_file_cap=4096))
    assert re.search(message, str(err.value)) and "\n" not in str(err.value)
    assert len(store.requests_for("124M", file_name)) == 1  # not retried
    # The files before it are complete; of this one nothing is left, not even a .part.
    assert sorted(os.listdir(tmp_path / "models" / "124M")) == sorted(MODEL_FILES[: MODEL_FILES.index(file_name)])


def test_persistent_stall_gives_up_without_final_file(store, tmp_path):
    store.serve_model("124M", synthetic_files())
    store.faults["/models/124M/checkpoint"] = ["stall"] * 10
    with pytest.raises(
        GPT2TFError,
        match=r"^giving up on \S+/124M/checkpoint after 3 tries without progress "
        r"\(timed out at byte 0\); run the same command again to resume$",
    ):
        download_models(["124M"], config_for(store, tmp_path, timeout_s=0.2))
    assert not (tmp_path / "models" / "124M" / "checkpoint").exists()


def test_unknown_model_name_fails_before_any_request(store, tmp_path):
    with pytest.raises(GPT2TFError, match=r"unknown model '125M'; choose from 124M, 355M, 774M, 1558M"):
        download_models(["124M", "125M"], config_for(store, tmp_path))
    assert store.requests == []


def test_server_that_ignores_range_restarts_from_zero(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    store.ignore_range = True
    model_dir = tmp_path / "models" / "124M"
    model_dir.mkdir(parents=True)
    (model_dir / f"{DATA_FILE}.part").write_bytes(b"x" * 1000)  # what a resume would have kept, now wrong
    download_models(["124M"], config_for(store, tmp_path))
    assert store.requests_for("124M", DATA_FILE) == ["bytes=1000-"]
    assert_complete(model_dir, files)


def test_partial_content_from_the_wrong_offset_restarts_from_zero(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    store.faults[f"/models/124M/{DATA_FILE}"] = ["range_from_zero"]
    model_dir = tmp_path / "models" / "124M"
    model_dir.mkdir(parents=True)
    (model_dir / f"{DATA_FILE}.part").write_bytes(files[DATA_FILE][:1000])
    download_models(["124M"], config_for(store, tmp_path))
    assert store.requests_for("124M", DATA_FILE) == ["bytes=1000-", None]
    assert_complete(model_dir, files)


def test_part_that_is_already_whole_is_renamed(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    model_dir = tmp_path / "models" / "124M"
    model_dir.mkdir(parents=True)
    (model_dir / f"{DATA_FILE}.part").write_bytes(files[DATA_FILE])
    download_models(["124M"], config_for(store, tmp_path))
    assert store.requests_for("124M", DATA_FILE) == [f"bytes={len(files[DATA_FILE])}-"]  # answered 416
    assert_complete(model_dir, files)


def test_part_longer_than_the_remote_file_restarts_from_zero(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    model_dir = tmp_path / "models" / "124M"
    model_dir.mkdir(parents=True)
    (model_dir / "checkpoint.part").write_bytes(files["checkpoint"] + b"junk")
    download_models(["124M"], config_for(store, tmp_path))
    assert store.requests_for("124M", "checkpoint") == [f"bytes={len(files['checkpoint']) + 4}-", None]
    assert_complete(model_dir, files)


def test_complete_files_are_skipped_without_requests(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    config = config_for(store, tmp_path, known_sizes={"124M": {DATA_FILE: len(files[DATA_FILE])}})
    download_models(["124M"], config)
    store.requests.clear()
    download_models(["124M"], config)
    assert store.requests == []


def test_legacy_name_downloads_the_new_name(store, tmp_path, capsys):
    files = synthetic_files()
    store.serve_model("124M", files)
    [model_dir] = download_models(["117M"], config_for(store, tmp_path, quiet=False))
    assert model_dir == tmp_path / "models" / "124M"
    assert not (tmp_path / "models" / "117M").exists()
    assert {path for path, _ in store.requests} == {f"/models/124M/{name}" for name in MODEL_FILES}
    assert_complete(model_dir, files)
    assert "note: 117M is the old name of 124M" in capsys.readouterr().err


def test_unwritable_models_dir_is_a_clear_error(store, tmp_path):
    (tmp_path / "models").write_text("a file, not a directory")
    with pytest.raises(GPT2TFError, match=r"^cannot write .*; free some space or choose another --models_dir$"):
        download_models(["124M"], config_for(store, tmp_path))


def test_refused_connection_gives_up_with_the_reason(tmp_path):
    with socket.socket() as probe:  # a port on 127.0.0.1 that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = DownloadConfig(
        models_dir=str(tmp_path),
        base_url=f"http://127.0.0.1:{port}/models",
        quiet=True,
        verify=False,
        tries=2,
        backoff_s=0.001,
    )
    with pytest.raises(GPT2TFError, match=r"after 2 tries without progress \(Connection refused\); run the same"):
        download_models(["124M"], config)
    assert os.listdir(tmp_path / "124M") == []


def run_cli(*args, env=None):
    env = {**os.environ, "NO_PROXY": "127.0.0.1", **(env or {})}
    return subprocess.run(
        [sys.executable, "download_model.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_404_exits_nonzero_with_one_line(store, tmp_path):
    result = run_cli("355M", "--models_dir", str(tmp_path), "--base_url", store.base_url, "--quiet")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {store.base_url}/355M/checkpoint not found (HTTP 404); check the model name and --base_url"
    ]
    assert os.listdir(tmp_path / "355M") == []


@pytest.mark.parametrize(
    "fault, message",
    [
        ("endless", "is longer than this file can be (over 67,108,864 bytes); check --base_url"),  # the real cap
        ("html", "sent an HTML page instead of the file"),
    ],
)
def test_cli_refused_response_exits_2_with_one_line(store, tmp_path, fault, message):
    store.serve_model("774M", real_vocab_files())
    store.faults["/models/774M/checkpoint"] = [fault]
    result = run_cli("774M", "--models_dir", str(tmp_path), "--base_url", store.base_url, "--quiet")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {store.base_url}/774M/checkpoint ") and message in line, line
    assert os.listdir(tmp_path / "774M") == []


def test_cli_unknown_model_and_env_base_url(store, tmp_path):
    result = run_cli("bogus", "--models_dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: unknown model 'bogus'; choose from 124M, 355M, 774M, 1558M (old names 117M, 345M also work)"
    ]

    store.serve_model("774M", real_vocab_files())  # no data size is known for 774M
    result = run_cli("774M", "--models_dir", str(tmp_path), "--no_verify", env={"GPT2TF_BASE_URL": store.base_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tmp_path / '774M'}: ready (load check skipped)"]
    assert sorted(os.listdir(tmp_path / "774M")) == sorted(MODEL_FILES)


def test_importing_the_downloader_does_not_load_tensorflow():
    code = "import sys, gpt2tf.download; assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def synthetic_model_files(tmp_path, hparams):
    """A tiny real model dir as OpenAI ships it (with a stand-in for the TF1 graph we never read)."""
    model_dir = tmp_path / "source"
    gpt2tf.write_synthetic_checkpoint(model_dir, hparams)
    (model_dir / "model.ckpt.meta").write_bytes(b"not a graph; nothing reads it")
    return {name: (model_dir / name).read_bytes() for name in MODEL_FILES}


def test_cli_checks_that_the_model_loads_by_default(store, tmp_path, capsys):
    tiny = gpt2tf.HParams(n_vocab=64, n_ctx=16, n_embd=8, n_head=2, n_layer=2)
    files = synthetic_model_files(tmp_path, tiny)
    store.serve_model("1558M", files)
    download_main(
        ["1558M", "--models_dir", str(tmp_path / "models"), "--base_url", store.base_url, "--quiet"]
    )  # --quiet silences notes and bars, and prints nothing on success
    assert_complete(tmp_path / "models" / "1558M", files)
    assert capsys.readouterr().out == ""

    files["hparams.json"] = json.dumps({**dataclasses.asdict(tiny), "n_layer": 3}).encode()  # one layer too many
    store.serve_model("774M", files)
    with pytest.raises(GPT2TFError, match=r"^\S*774M was downloaded but does not load: .*h2") as err:
        download_main(["774M", "--models_dir", str(tmp_path / "models"), "--base_url", store.base_url, "--quiet"])
    assert "\n" not in str(err.value)
    # Every file came from the server in this run, so there is nothing to repair: each was fetched once.
    assert [path for path, _ in store.requests if "/774M/" in path] == [f"/models/774M/{name}" for name in MODEL_FILES]


def test_cli_load_check_prints_only_the_result(store, tmp_path):
    store.serve_model("774M", synthetic_model_files(tmp_path, TINY))
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [
            sys.executable,
            "download_model.py",
            "774M",
            "--models_dir",
            str(tmp_path / "models"),
            "--base_url",
            store.base_url,
        ],
        cwd=REPO,
        env={**env, "NO_PROXY": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tmp_path / 'models' / '774M'}: ready"]
    assert result.stderr == ""  # none of TensorFlow's start-up lines


def download_tiny_774M(store, tmp_path, *extra):
    """Serve a tiny loadable model as 774M (no data size known), download it; return the files and the command."""
    files = synthetic_model_files(tmp_path, TINY)
    store.serve_model("774M", files)
    command = ["774M", "--models_dir", str(tmp_path / "models"), "--base_url", store.base_url, "--quiet", *extra]
    download_main(command)
    store.requests.clear()
    return files, command


def test_running_again_repairs_a_truncated_data_file_of_unknown_size(store, tmp_path):
    files, command = download_tiny_774M(store, tmp_path)
    model_dir = tmp_path / "models" / "774M"
    (model_dir / DATA_FILE).write_bytes(files[DATA_FILE][:-100])  # as an older tool, or a copy by hand, left it
    download_main(command)  # the very same command
    assert_complete(model_dir, files)
    # The load check fails, so the small files it reads are fetched again (cheap), then, as it still fails, the data
    # file; each from byte zero. encoder.json, vocab.bpe and model.ckpt.meta are not touched.
    assert store.requests == [
        (f"/models/774M/{name}", None) for name in ("checkpoint", "hparams.json", "model.ckpt.index", DATA_FILE)
    ]


@pytest.mark.parametrize(
    "file_name, damaged",
    [
        ("hparams.json", b'{"n_vocab": 64, "n_ctx": 16, "n_em'),
        ("checkpoint", PORTAL_PAGE),  # a captive portal's page saved by another tool
    ],
)
def test_running_again_replaces_a_damaged_small_file(store, tmp_path, file_name, damaged):
    files, command = download_tiny_774M(store, tmp_path)
    model_dir = tmp_path / "models" / "774M"
    (model_dir / file_name).write_bytes(damaged)
    download_main(command)
    assert_complete(model_dir, files)
    assert store.requests == [(f"/models/774M/{file_name}", None)]  # then the model loads: nothing else is fetched


def test_running_again_repairs_a_corrupt_data_file_of_known_size(store, tmp_path):
    files = synthetic_model_files(tmp_path, TINY)
    store.serve_model("124M", files)
    config = config_for(store, tmp_path, verify=True, known_sizes={"124M": {DATA_FILE: len(files[DATA_FILE])}})
    [model_dir] = download_models(["124M"], config)
    corrupt = bytearray(files[DATA_FILE])
    corrupt[len(corrupt) // 2] ^= 0xFF  # the right size, but a tensor's checksum fails
    (model_dir / DATA_FILE).write_bytes(bytes(corrupt))
    store.requests.clear()
    download_models(["124M"], config)
    assert_complete(model_dir, files)
    assert store.requests == [
        (f"/models/124M/{name}", None) for name in ("checkpoint", "hparams.json", "model.ckpt.index", DATA_FILE)
    ]


def test_force_downloads_every_file_again_from_byte_zero(store, tmp_path):
    store.serve_model("774M", real_vocab_files(seed=0))
    command = ["774M", "--models_dir", str(tmp_path / "models"), "--base_url", store.base_url, "--quiet", "--no_verify"]
    download_main(command)
    model_dir = tmp_path / "models" / "774M"
    (model_dir / f"{DATA_FILE}.part").write_bytes(b"x" * 1000)  # left by an interrupted run: not trusted either
    newer = real_vocab_files(seed=1)
    store.serve_model("774M", newer)
    store.requests.clear()
    download_main([*command, "--force"])
    assert sorted(store.requests) == sorted((f"/models/774M/{name}", None) for name in MODEL_FILES)
    assert_complete(model_dir, newer)


def test_interrupted_force_keeps_the_complete_file(store, tmp_path):
    files = synthetic_files()
    store.serve_model("124M", files)
    [model_dir] = download_models(["124M"], config_for(store, tmp_path))
    store.faults[f"/models/124M/{DATA_FILE}"] = ["drop"] + ["500"] * 10
    with pytest.raises(GPT2TFError, match=r"giving up on .*/124M/model\.ckpt\.data-00000-of-00001 after 3 tries"):
        download_models(["124M"], config_for(store, tmp_path, force=True))
    assert (model_dir / DATA_FILE).read_bytes() == files[DATA_FILE]  # untouched until a new copy is complete
    assert 0 < len((model_dir / f"{DATA_FILE}.part").read_bytes()) < len(files[DATA_FILE])


def test_cli_usage_errors_are_one_line():
    for args in ((), ("124M", "--bogus")):
        result = run_cli(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
