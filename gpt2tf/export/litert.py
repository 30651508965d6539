"""The LiteRT export: `model.tflite` with a key/value cache, and `model.litertlm`, the LiteRT-LM bundle.

`model.tflite` has one `decode` signature and a `prefill_N` signature per prompt chunk length N, in LiteRT-LM's names:
inputs `tokens` int32 [1, N] and `input_pos` int32 [N] (the tokens' absolute positions), and per layer
`kv_cache_k_{i}` / `kv_cache_v_{i}` float32 [1, n_head, max_len, head_size], passed in and returned (LiteRT-LM binds
one buffer as both, so the cache is updated in place); output `logits` float32 [1, 1, n_vocab], the logits after the
chunk's last real token. A chunk is written into the cache at slots input_pos[0].. (a dynamic-update-slice);
slots after its real tokens may be padding, which LiteRT-LM marks with position 0 (the logits are those of the last
slot whose position continues the run; the padding's keys land in slots no query attends to before a later token
overwrites them). Each signature runs the model's own embedding, blocks and head on a cache of tensors (as the
export's SavedModel does through the runner; here each block is called on its own weights, which the converter
freezes: the runner's one block function shared by all layers, with the weights as arguments, converts wrongly).

Beside `decode`, `decode_W` signatures (W = 128, 256, 512 below max_len) attend over the cache's first W slots only:
gpt2tf's runner steps through the smallest that holds the sequence so far (a fixed-shape step reads every slot it
attends over); LiteRT-LM runs `decode`.

The weights are stored once, shared by every signature. `--quantize fp16` stores them as float16 (computed in
float32); `int8` is the converter's dynamic-range quantization (int8 weights, one scale per output row; activations
quantized per call for integer products), with the tied embedding stored once: the token lookup reads the head's int8
copy of it, each row times its scale (the converter alone keeps a second int8 copy for the lookup).

`model.litertlm` holds the model, a Hugging Face `tokenizer.json` written from the bundled vocabulary (LiteRT-LM's
tokenizer reads it) and LiteRT-LM's metadata: start and stop token 50256, max_num_tokens = max_len, the model's name
and size. LiteRT-LM puts the start token before every prompt.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import DEFAULT_MODEL_DIR, ENDOFTEXT, EOT_ID, LITERT_BUNDLE, LITERT_FILE, LITERT_INFO, VOCAB_DIR

QUANTIZE = ("none", "fp16", "int8")
DEFAULT_PREFILL_LENGTHS = (32, 128, 512)
# `decode_W`: the decode step attending over the cache's first W slots only (gpt2tf's runner takes the smallest that
# holds the sequence so far; LiteRT-LM runs `decode`, over the whole cache). A fixed-shape step reads every slot it
# attends over, so at 1024 slots the whole-cache attention is a large part of a 124M step (docs/export.md).
DECODE_WINDOWS = (128, 256, 512)
# The export's peak memory, measured at 124M (5.1 GB) and 355M (12.9 GB)
# (bench/export.py --litert; docs/export.md): about 0.6 GB plus 9 bytes per float32 weight byte (the model, the
# converter's SavedModel, its imported and frozen module, the flatbuffer and its bytes in Python each hold the weights
# at some point). 774M and larger do not fit 24 GB.
CONVERTER_BASE_BYTES = 0.6e9
CONVERTER_BYTES_PER_WEIGHT_BYTE = 9.0
FLATBUFFER_LIMIT = 2**31  # a flatbuffer addresses 2 GB: larger weights go after it (LiteRT's buffer offsets)


def prefill_lengths(lengths, max_len):
    """The prefill chunk lengths: the ones given (checked), or the defaults that fit max_len (max_len if none)."""
    if lengths is None:
        return [n for n in DEFAULT_PREFILL_LENGTHS if n <= max_len] or [max_len]
    lengths = sorted(set(lengths))
    if not lengths or lengths[0] < 1:
        raise GPT2TFError(f"--prefill_lengths must be positive integers, got {lengths}")
    if lengths[-1] > max_len:
        raise GPT2TFError(
            f"--prefill_lengths {lengths[-1]} is above --max_len {max_len}: a prefill chunk must fit the cache"
        )
    return lengths


def converter_memory(hparams):
    """Bytes the converter is expected to need at its peak for a model of this shape (float32 weights)."""
    return CONVERTER_BASE_BYTES + CONVERTER_BYTES_PER_WEIGHT_BYTE * 4 * hparams.num_parameters


def check_memory(hparams):
    """Refuse, before any work, a model whose conversion would not fit this machine's memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    need = converter_memory(hparams)
    if need > memory:
        raise GPT2TFError(
            f"converting a model of {hparams.num_parameters / 1e6:,.0f}M parameters to LiteRT needs about "
            f"{need / 2**30:.0f} GiB of memory (TensorFlow's converter holds several copies of the float32 weights), "
            f"more than this machine's {memory / 2**30:.0f} GiB; convert it on a machine with more memory"
        )


# ---------------------------------------------------------------------------------------------------------------
# The model file


def _signature_function(model, name, n, max_len, lookup, window=None):
    import tensorflow as tf

    hp = model.hparams

    def chunk(tokens, input_pos, *kv):
        start = input_pos[0]
        # The real tokens come first; padding (LiteRT-LM's) has position 0, so it never continues the run.
        real = tf.reduce_sum(tf.cast(tf.equal(input_pos, start + tf.range(n)), tf.int32))
        x, mask = model.embed(tokens, start, max_length=max_len, lookup=lookup)
        cache = list(zip(kv[0::2], kv[1::2]))
        for i, block in enumerate(model.h):  # each block on its own weights (the converter freezes them in place)
            x, cache[i] = block(x, mask, cache[i], start, window=window)
        last = tf.gather(x, [real - 1], axis=1)  # [1, 1, n_embd]
        outputs = {"logits": tf.reshape(model.head(last), [1, 1, hp.n_vocab])}
        for i, (keys, values) in enumerate(cache):
            outputs[f"kv_cache_k_{i}"], outputs[f"kv_cache_v_{i}"] = keys, values
        return outputs

    chunk.__name__ = name  # the converter names each signature after its function
    cache_spec = [1, hp.n_head, max_len, hp.head_size]
    specs = [tf.TensorSpec([1, n], tf.int32, name="tokens"), tf.TensorSpec([n], tf.int32, name="input_pos")]
    specs += [
        tf.TensorSpec(cache_spec, tf.float32, name=f"kv_cache_{kind}_{i}") for i in range(hp.n_layer) for kind in "kv"
    ]
    return tf.function(chunk, autograph=False).get_concrete_function(*specs)


def _int8_lookup(model):
    """The token lookup of the int8 export: int8 rows times their scale (float32 bits kept in an int32 table, which
    the converter's quantizer leaves alone). `_store_embedding_once` then points the rows at the head's int8 copy of
    the embedding and the scales at its scales."""
    import tensorflow as tf

    wte = model.wte.numpy()
    scale = np.abs(wte).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    rows = tf.constant(np.clip(np.round(wte / scale[:, None]), -127, 127).astype(np.int8), name="gpt2tf_wte_int8")
    bits = tf.constant(scale.view(np.int32), name="gpt2tf_wte_scale_bits")

    def lookup(token_ids):
        values = tf.cast(tf.gather(rows, token_ids), tf.float32)
        return values * tf.bitcast(tf.gather(bits, token_ids), tf.float32)[..., None]

    return lookup


def convert(model, *, max_len, lengths, quantize="none"):
    """The `.tflite` flatbuffer (bytes) of `model` with a `decode` and a `prefill_N` signature per N in `lengths`."""
    import tensorflow as tf

    if model.weight_format != "float32":
        raise GPT2TFError(f"the LiteRT export reads float32 weights, not {model.weight_format}")
    lookup = _int8_lookup(model) if quantize == "int8" else None
    functions = [_signature_function(model, "decode", 1, max_len, lookup)]
    functions += [
        _signature_function(model, f"decode_{w}", 1, max_len, lookup, window=w) for w in DECODE_WINDOWS if w < max_len
    ]
    functions += [_signature_function(model, f"prefill_{n}", n, max_len, lookup) for n in lengths]
    holder = tf.Module()
    # The converter freezes plain tf.Variables into constants; Keras's own variable objects it would keep as
    # resource variables (a file without its weights), so it is given the tf.Variables they hold.
    holder.weights = [w.value for w in model.weights]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize in ("fp16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    stored = {"none": 4, "fp16": 2, "int8": 1}[quantize] * model.hparams.num_parameters
    if stored > FLATBUFFER_LIMIT * 0.9:
        converter._experimental_use_buffer_offset = True  # the converter's switch for models over 2 GB
    data = converter.convert()
    if quantize == "int8":
        data = _store_embedding_once(data, model.hparams)
    return data


def _store_embedding_once(data, hparams):
    """Point the int8 token lookup's rows at the head's int8 embedding and its scales at the head's scales, and drop
    the lookup's own copy: the file then holds the embedding once, and both read the same int8 values."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.convert_bytearray_to_object(bytearray(data))
    shape = [hparams.n_vocab, hparams.n_embd]
    head, rows, scales = set(), set(), set()
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            q = tensor.quantization
            scaled = q is not None and q.scale is not None and len(q.scale) > 0
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            constant = data is not None and len(data) > 0
            if list(tensor.shape) == shape and tensor.type == fb.TensorType.INT8:
                if scaled and len(q.scale) == hparams.n_vocab and q.quantizedDimension == 0:
                    head.add((tensor.buffer, tuple(np.asarray(q.scale, np.float32))))
                elif not scaled:  # the lookup's own int8 rows (a constant the quantizer leaves as it is)
                    rows.add(tensor.buffer)
            elif list(tensor.shape) == [hparams.n_vocab] and tensor.type == fb.TensorType.INT32 and constant:
                scales.add(tensor.buffer)  # the lookup's scales, as float32 bits
    if len(head) != 1 or len(rows) != 1 or len(scales) != 1:
        raise GPT2TFError(
            f"the int8 conversion did not come out as expected (head copies {len(head)}, lookup tables {len(rows)}, "
            f"scale tables {len(scales)}): please report it; --quantize fp16 or none work meanwhile"
        )
    (head_buffer, head_scale), row_buffer, scale_buffer = head.pop(), rows.pop(), scales.pop()
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            if tensor.buffer == row_buffer:
                tensor.buffer = head_buffer
    model.buffers[row_buffer].data = None
    model.buffers[scale_buffer].data = np.asarray(head_scale, np.float32).view(np.uint8)
    return bytes(fb.convert_object_to_bytearray(model))


# ---------------------------------------------------------------------------------------------------------------
# The LiteRT-LM bundle


def tokenizer_json(vocab_dir=VOCAB_DIR):
    """GPT-2's tokenizer as a Hugging Face `tokenizer.json` (byte-level BPE), from OpenAI's encoder.json and
    vocab.bpe: what LiteRT-LM's tokenizer (tokenizers-cpp) reads."""
    vocab = json.loads((Path(vocab_dir) / "encoder.json").read_text(encoding="utf-8"))
    lines = (Path(vocab_dir) / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line.strip()]  # the first line is a version header
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": EOT_ID,
                "content": ENDOFTEXT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def llm_metadata(max_len):
    """LiteRT-LM's LlmMetadata (text proto): a generic model, start and stop token <|endoftext|>, greedy by default
    (LiteRT-LM's CPU sampler is top-p with k = 1), at most max_len tokens."""
    return (
        "llm_model_type { generic_model {} }\n"
        f"start_token {{ token_ids {{ ids: {EOT_ID} }} }}\n"
        f"stop_tokens {{ token_ids {{ ids: {EOT_ID} }} }}\n"
        f"max_num_tokens: {max_len}\n"
        "sampler_params { type: TOP_P k: 1 p: 1.0 temperature: 1.0 seed: 0 }\n"
    )


def write_bundle(work, *, name, hparams, max_len):
    """`work/model.litertlm` from `work/model.tflite`, with the tokenizer and metadata (written beside it first,
    then removed)."""
    from litert_lm_builder import litertlm_builder as builder

    tokenizer = work / "tokenizer.json"
    metadata = work / "llm_metadata.textproto"
    tokenizer.write_text(json.dumps(tokenizer_json(), ensure_ascii=False), encoding="utf-8")
    metadata.write_text(llm_metadata(max_len), encoding="utf-8")
    string = builder.DType.STRING
    bundle = builder.LitertLmFileBuilder()
    bundle.add_system_metadata(builder.Metadata(key="Authors", value="gpt2tf (OpenAI's GPT-2)", dtype=string))
    bundle.add_system_metadata(builder.Metadata(key="model_name", value=name, dtype=string))
    bundle.add_system_metadata(
        builder.Metadata(key="model_size", value=f"{hparams.num_parameters / 1e6:.0f}M parameters", dtype=string)
    )
    bundle.add_tflite_model(str(work / LITERT_FILE), builder.TfLiteModelType.PREFILL_DECODE)
    bundle.add_hf_tokenizer(str(tokenizer))
    bundle.add_llm_metadata(str(metadata))
    with open(work / LITERT_BUNDLE, "wb") as out:
        bundle.build(out)
    tokenizer.unlink()
    metadata.unlink()


# ---------------------------------------------------------------------------------------------------------------
# The command


def export_litert(config, *, target, lengths=None, out=sys.stderr):
    """`export.py --format litert` (checked by `gpt2tf.export.command`): write `target`/model.tflite, model.litertlm
    and litert.json, with prefill signatures of `lengths` (None: the defaults); returns `target`."""
    import tensorflow as tf

    from gpt2tf.files import writing_dir
    from gpt2tf.formats.load import load_for_inference, model_hparams

    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    hparams = model_hparams(model_dir)
    max_len = config.max_len or hparams.n_ctx
    if max_len > hparams.n_ctx:
        raise GPT2TFError(f"--max_len {max_len} is above the model's context of {hparams.n_ctx}: give at most that")
    lengths = prefill_lengths(lengths, max_len)
    check_memory(hparams)
    started = time.perf_counter()
    model = load_for_inference(model_dir)
    if model.weight_format != "float32":
        raise GPT2TFError(
            f"{model_dir} holds {model.weight_format} weights saved for decoding: the LiteRT export starts from "
            f"float32 weights; give the float32 model dir it was made from (and --quantize int8)"
        )
    print(f"converting {model_dir} to LiteRT ({config.quantize}, max_len {max_len}, prefill {lengths}) ...", file=out)
    data = convert(model, max_len=max_len, lengths=lengths, quantize=config.quantize)
    info = {
        "format": "gpt2tf-litert",
        "version": 1,
        "model": Path(str(model_dir).rstrip("/\\")).name,
        "hparams": dataclasses.asdict(hparams),
        "max_len": max_len,
        "prefill_lengths": lengths,
        "quantize": config.quantize,
        "eot_id": EOT_ID,
        "file_bytes": len(data),  # the runner refuses a truncated model.tflite (LiteRT itself would crash on it)
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with writing_dir(target, what="the LiteRT export to ", replace=True, errors=(OSError, tf.errors.OpError)) as (
        work,
        _,
    ):
        (work / LITERT_FILE).write_bytes(data)
        if not config.no_bundle:
            write_bundle(work, name=info["model"], hparams=hparams, max_len=max_len)
        (work / LITERT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(
        f"exported {model_dir} to {target}/ ({LITERT_FILE} {len(data) / 1e6:,.1f} MB"
        f"{'' if config.no_bundle else ', ' + LITERT_BUNDLE}) in {time.perf_counter() - started:.0f} s",
        file=out,
    )
    return target
