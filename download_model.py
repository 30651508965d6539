"""Download OpenAI's released GPT-2 models: `python download_model.py 124M [355M ...] [--models_dir models]`.

Kept short: the logic lives in `gpt2tf.download`, where it is tested.
"""

import argparse
import os

from gpt2tf.cli import run
from gpt2tf.download import BASE_URL_ENV, DEFAULT_BASE_URL, LEGACY_NAMES, MODEL_NAMES, DownloadConfig, download_models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="model",
                        help=f"{', '.join(MODEL_NAMES)} (old names {', '.join(LEGACY_NAMES)} are accepted)")
    parser.add_argument("--models_dir", default=DownloadConfig.models_dir,
                        help="each model goes to <models_dir>/<model> (default: %(default)s)")
    parser.add_argument("--base_url", default=os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
                        help=f"where <model>/<file> is fetched from, e.g. a mirror; the default is ${BASE_URL_ENV} "
                             f"if set, else {DEFAULT_BASE_URL}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes, only errors")
    parser.add_argument("--no_verify", dest="verify", action="store_false",
                        help="skip loading each model with gpt2tf.load_model after the download (no TensorFlow)")
    args = parser.parse_args(argv)
    download_models(args.models, DownloadConfig(models_dir=args.models_dir, base_url=args.base_url,
                                                quiet=args.quiet, verify=args.verify))


if __name__ == "__main__":
    run(main)
