"""gpt2tf: OpenAI's GPT-2 in TensorFlow 2 / Keras 3."""

from pathlib import Path

from setuptools import find_packages, setup

# Why each dependency is here (none is pinned beyond what the code needs):
#   tensorflow>=2.16  the backend; 2.16 is the first release whose `keras` is Keras 3
#   keras>=3.0        the layers and dtype policies the model is written with
#   numpy             arrays at the edges (checkpoint checks, data)
#   regex             GPT-2's pre-tokenizer pattern uses \p{L} / \p{N}, which the stdlib `re` lacks
#   requests          streaming HTTP with Range requests for resumable model downloads
#   tqdm              progress bars for downloads, tokenisation and training (silent when not a terminal)
#   tensorflow-datasets  the `tfds` data loader and cnn_dailymail from tfds (and tfds.testing.mock_data in tests)
#   importlib_resources  imported by tensorflow-datasets when it downloads and prepares a dataset (cnndm's default),
#                     but declared by it only for Python < 3.9
#   h5py              the ancestor's .h5 weights files (--output_name, --custom_model); Keras needs it anyway
#   rouge-score       evaluate.py's ROUGE: Google's re-implementation of ROUGE-1.5.5, what papers' CNN/DM figures
#                     are computed with (its stemmer comes from nltk, which it brings; no NLTK data is needed)
#   ml_dtypes        NumPy's bfloat16 for --weights bf16 (round to nearest even); TensorFlow itself depends on it
#   fastapi, uvicorn  serve.py's HTTP layer: request parsing, streaming responses (server-sent events) and client
#                     disconnects handled by a well-kept ASGI stack instead of a hand-written HTTP server; serving
#                     is a main use, so they are installed with the package
# Optional, the `litert` extra (pip install "gpt2tf[litert]"): export.py --format litert and running its output.
#   ai-edge-litert    Google's LiteRT runtime (and its flatbuffer schema): runs model.tflite without TensorFlow
#                     (gpt2tf generate --model_dir EXPORT_DIR); the export reads the converted file with its schema
#   litert-lm-builder writes the LiteRT-LM bundle (model.litertlm): LiteRT-LM's own packer, so the format is theirs
# Not a dependency: a C++ compiler (g++/clang++). If present, gpt2tf builds its small decode kernels
#   (gpt2tf/kernels/native_matmul.cc) on first use; without one, decoding falls back to XLA's own dot.
INSTALL_REQUIRES = [
    "tensorflow>=2.16",
    "keras>=3.0",
    "numpy",
    "regex",
    "requests",
    "tqdm",
    "tensorflow-datasets",
    "importlib_resources",
    "h5py",
    "ml_dtypes",
    "fastapi",
    "uvicorn",
    "rouge-score",
]

# Test-only: pytest runs the suite; tiktoken (built offline from our bundled vocab files) is the independent
# reference the encoder is checked against, bit for bit; openai is the official client the server is tested with,
# httpx the plain HTTP client for what it cannot send (bad bodies, the predict API, disconnects; and bench/serve.py);
# selenium drives the system's headless Chromium (installed by .ci/run) to test the page. transformers (with torch,
# and safetensors to write test checkpoints) is the independent reference for the Hugging Face interop and the peer in
# the benchmarks; never a runtime dependency. torch is pinned to the CPU build this machine image carries on disk
# (any other release pulls a CUDA build of several GB). ruff is the linter and formatter .ci/run checks the tree with
# (configured in ruff.toml). litert-lm-api is LiteRT-LM's runtime, the independent check that the bundle runs and
# gives the library's text; the LiteRT extra's packages are tested too.
LITERT = ["ai-edge-litert>=2.0", "litert-lm-builder"]
EXTRAS_REQUIRE = {
    "litert": LITERT,
    "test": [
        *LITERT,
        "litert-lm-api",
        "pytest",
        "ruff",
        "tiktoken",
        "openai",
        "httpx",
        "selenium",
        "torch==2.13.0",
        "transformers",
        "safetensors",
    ],
}

setup(
    name="gpt2tf",
    version="0.1.0",
    description="OpenAI's GPT-2 in TensorFlow 2 / Keras 3: exact, fast to load, lean on memory",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gpt2tf", "gpt2tf.*"]),
    package_data={"gpt2tf": ["vocab/encoder.json", "vocab/vocab.bpe", "kernels/native_matmul.cc", "serve/page.html"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["gpt2tf = gpt2tf.cli:main"]},  # gpt2tf download|generate|finetune|serve|...
    license="MIT",
)
