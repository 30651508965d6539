"""The package's shape, read from its source: layers that import only downwards, no import cycle, the old module
paths kept as thin re-exports, and light imports staying light."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpt2tf"

# Lowest first. A module may import its own component and any component of a lower layer, nothing else: not a
# sibling of its own layer, never one above. (docs/layout.md draws the same picture.)
LAYERS = [
    {  # no TensorFlow: facts, configs, the tokenizer
        "base": (
            "gpt2tf._lazy",
            "gpt2tf.errors",
            "gpt2tf.layout",
            "gpt2tf.weight_formats",
            "gpt2tf.files",
            "gpt2tf.hparams",
            "gpt2tf.settings",
            "gpt2tf.config",
            "gpt2tf.encoder",
            "gpt2tf.startup",
        ),
    },
    {"model": ("gpt2tf.model",), "kernels": ("gpt2tf.kernels",), "data": ("gpt2tf.data",)},
    {"formats": ("gpt2tf.formats",)},
    {"decode": ("gpt2tf.decode",), "score": ("gpt2tf.score",)},
    {"train": ("gpt2tf.train",), "evaluate": ("gpt2tf.evaluate",), "export": ("gpt2tf.export",)},
    {"serve": ("gpt2tf.serve",), "inference": ("gpt2tf.inference",), "download": ("gpt2tf.download",)},
    {"cli": ("gpt2tf.cli", "gpt2tf.__main__")},
    {  # the old flat module paths, re-exporting from their new homes; nothing inside the package imports them
        "compat": (
            "gpt2tf.checkpoint",
            "gpt2tf.hf",
            "gpt2tf.quantize",
            "gpt2tf.engine",
            "gpt2tf.sample",
            "gpt2tf.filters",
        ),
    },
]
TOP = "gpt2tf"  # the package's __init__: lazy names, importing nothing above the base layer


def _modules():
    """{module name: path} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _component(module):
    """(layer index, component name) of a module: the longest prefix that names a component."""
    best = None
    for index, layer in enumerate(LAYERS):
        for name, prefixes in layer.items():
            for prefix in prefixes:
                if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[2]):
                    best = (index, name, len(prefix))
    return None if best is None else best[:2]


def _imports(module, path):
    """The gpt2tf modules `module` imports anywhere in its source (in functions too): [(line, imported)]."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == TOP]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != TOP:
                continue
            for alias in node.names:  # `from gpt2tf.formats import hf` imports the submodule gpt2tf.formats.hf
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in _MODULES else base))
    return found


_MODULES = _modules()


def _edges():
    return {module: _imports(module, path) for module, path in _MODULES.items()}


def test_every_module_has_a_layer_and_a_docstring():
    for module, path in _MODULES.items():
        assert module == TOP or _component(module) is not None, f"{module} is in no layer of LAYERS"
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{module} has no docstring"


def test_imports_go_down_only():
    wrong = []
    for module, imports in _edges().items():
        if module == TOP:  # its names stay lazy: it imports the base layer only
            wrong += [f"gpt2tf:{line} imports {t}" for line, t in imports if _component(t)[0] != 0]
            continue
        layer, component = _component(module)
        for line, target in imports:
            if target == TOP:
                continue  # `from gpt2tf import __version__`
            target_layer, target_component = _component(target)
            if target_component != component and target_layer >= layer:
                wrong.append(f"{module}:{line} imports {target} ({target_component}, layer {target_layer})")
    assert not wrong, "imports that do not go down:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = {m: {t for _, t in imports if t in _MODULES and t != m} for m, imports in _edges().items()}
    # A package's __init__ that names its modules lazily (strings) imports none of them, so any cycle is real.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The rules above can fail: a model module importing the decode package, and two modules importing each
    other, are both reported."""
    fake = {
        "gpt2tf.model": "from gpt2tf.decode import engine\n",
        "gpt2tf.decode.engine": "from gpt2tf.decode import runner\n",
        "gpt2tf.decode.runner": "import gpt2tf.decode.engine\n",
    }
    paths = {}
    for module, source in fake.items():
        path = tmp_path / (module.replace(".", "_") + ".py")
        path.write_text('"""A module."""\n' + source)
        paths[module] = path
    monkeypatch.setattr(sys.modules[__name__], "_MODULES", paths)
    with pytest.raises(AssertionError, match=r"gpt2tf\.model:2 imports gpt2tf\.decode\.engine"):
        test_imports_go_down_only()
    with pytest.raises(AssertionError, match=r"import cycles"):
        test_no_import_cycle()


# The module paths the README and docs teach, with the names each must keep giving.
TAUGHT = {
    "gpt2tf.engine": ["Engine", "Request"],
    "gpt2tf.sample": ["generate", "generate_text", "generate_stream", "SamplerConfig", "cut_at_stop"],
    "gpt2tf.evaluate": ["perplexity", "lambada", "multiple_choice", "continuations", "summarize", "hellaswag_row"],
    "gpt2tf.score": ["score", "windows"],
    "gpt2tf.encoder": ["get_encoder", "Encoder"],
    "gpt2tf.train": ["TrainConfig", "finetune", "configure"],
    "gpt2tf.download": ["DownloadConfig", "download_models"],
    "gpt2tf.filters": ["choose_tokens", "top_k_logits", "top_p_logits", "filter_logits"],
    "gpt2tf.checkpoint": ["load_model", "save_openai_checkpoint", "model_tensors", "checkpoint_key"],
    "gpt2tf.hf": ["load_hf_model", "save_hf_checkpoint", "hparams_from_config"],
    "gpt2tf.quantize": ["save_quantized", "load_quantized", "quantize_int8"],
    "gpt2tf.hparams": ["HParams", "pretrained"],
    "gpt2tf.data": ["TLDR", "load_dataset"],
}


@pytest.mark.parametrize("module", sorted(TAUGHT))
def test_the_taught_module_paths_keep_working(module):
    imported = importlib.import_module(module)
    for name in TAUGHT[module]:
        assert callable(getattr(imported, name)) or isinstance(getattr(imported, name), str), (module, name)


def test_every_public_name_of_the_package_resolves():
    import gpt2tf

    for name in gpt2tf.__all__:
        assert getattr(gpt2tf, name) is not None, name
    assert gpt2tf.load_model is importlib.import_module("gpt2tf.formats.load").load_model


def _imported_after(code):
    """The gpt2tf modules and heavy libraries a fresh process has imported after running `code`."""
    heavy = ("h5py", "fastapi", "uvicorn", "tensorflow", "requests", "transformers")
    probe = (
        f"import sys\n{code}\n"
        f"print(' '.join(sorted(m for m in sys.modules if m.startswith('gpt2tf') or m in {heavy!r})))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PACKAGE.parent, env=env
    )
    return set(result.stdout.split())


def test_a_command_line_and_a_config_import_no_tensorflow():
    loaded = _imported_after(
        "import gpt2tf, gpt2tf.cli, gpt2tf.train.config, gpt2tf.serve.command, gpt2tf.evaluate.command, "
        "gpt2tf.export.command, gpt2tf.formats.convert, gpt2tf.inference, gpt2tf.download"
    )
    assert "tensorflow" not in loaded and "fastapi" not in loaded, loaded


def test_loading_an_openai_checkpoint_imports_only_what_loading_needs(tiny_model_dir):
    loaded = _imported_after(f"import gpt2tf\ngpt2tf.load_model({str(tiny_model_dir)!r})")
    assert {"gpt2tf.formats.openai", "gpt2tf.model", "tensorflow"} <= loaded, loaded
    unneeded = {
        "gpt2tf.formats.hf",
        "gpt2tf.formats.h5",
        "gpt2tf.formats.quantized",
        "gpt2tf.kernels",
        "gpt2tf.decode",
        "gpt2tf.serve",
        "gpt2tf.train",
        "fastapi",
        "uvicorn",
        "transformers",
    }  # (TensorFlow itself imports h5py and requests)
    assert not loaded & unneeded, loaded & unneeded
