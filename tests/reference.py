"""An independent GPT-2 forward pass in NumPy float64, written from OpenAI's `model.py` semantics, and the
nucleus rule spelled out.

It shares no code with gpt2tf: tensors come from TensorFlow's own checkpoint reader, keyed by OpenAI's names, and
every operation is spelled out here so the Keras model and the filters can be checked against it.
"""

import numpy as np
import tensorflow as tf


def read_openai_checkpoint(prefix):
    """{name: float64 array} for every tensor of a TF1 checkpoint, via TensorFlow's reader (not gpt2tf's)."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name).astype(np.float64) for name in reader.get_variable_to_shape_map()}


def _layer_norm(x, g, b, eps=1e-5):
    u = x.mean(axis=-1, keepdims=True)
    s = ((x - u) ** 2).mean(axis=-1, keepdims=True)
    return (x - u) / np.sqrt(s + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _conv1d(x, w, b):
    return x @ w[0] + b


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def reference_logits(params, n_head, tokens):
    """Logits [len(tokens), n_vocab] for one sequence, from position 0, no cache."""
    tokens = np.asarray(tokens)
    n = len(tokens)
    x = params["model/wte"][tokens] + params["model/wpe"][np.arange(n)]
    n_layer = len({k.split("/")[1] for k in params if k.startswith("model/h")})
    for i in range(n_layer):
        p = lambda name: params[f"model/h{i}/{name}"]  # noqa: E731
        h = _layer_norm(x, p("ln_1/g"), p("ln_1/b"))
        q, k, v = np.split(_conv1d(h, p("attn/c_attn/w"), p("attn/c_attn/b")), 3, axis=-1)
        heads = lambda t: t.reshape(n, n_head, -1).transpose(1, 0, 2)  # noqa: E731  [head, n, head_size]
        q, k, v = heads(q), heads(k), heads(v)
        w = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        causal = np.tril(np.ones((n, n), dtype=bool))
        w = np.where(causal, w, -1e10)
        a = (_softmax(w) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = x + _conv1d(a, p("attn/c_proj/w"), p("attn/c_proj/b"))
        m = _gelu(_conv1d(_layer_norm(x, p("ln_2/g"), p("ln_2/b")), p("mlp/c_fc/w"), p("mlp/c_fc/b")))
        x = x + _conv1d(m, p("mlp/c_proj/w"), p("mlp/c_proj/b"))
    x = _layer_norm(x, params["model/ln_f/g"], params["model/ln_f/b"])
    return x @ params["model/wte"].T


def top_p_kept(logits, p):
    """The tokens nucleus sampling keeps, by the documented rule: walk tokens by descending probability, keep while
    the mass before is < p; tokens tied with the last kept one stay too."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    kept, mass = set(), 0.0
    for token in sorted(range(len(logits)), key=lambda t: -probs[t]):
        if mass >= p:
            break
        kept.add(token)
        mass += probs[token]
    last = min(logits[t] for t in kept)
    return kept | set(np.flatnonzero(logits == last))
