"""Convert HellaSwag's validation file to the rows `evaluate.py --task multiple_choice` reads.

    python datasets/convert_hellaswag.py hellaswag_val.jsonl > hellaswag_mc.jsonl

`evaluate.py` also reads HellaSwag's own file directly (it converts each row the same way); this script is for
looking at, filtering or sharing the converted rows. HellaSwag's rows (`hellaswag_val.jsonl` from its authors) have
`activity_label`, `ctx_a`, `ctx_b`, `endings` and `label`. As lm-evaluation-harness builds them (see
`gpt2tf.evaluate.hellaswag_row`): context = activity_label + ": " + ctx_a + " " + ctx_b capitalized, each ending
prefixed by a space; its light cleanup of the text (" [title]" -> ". ", "[header]"-style tags and double spaces
removed) is applied to both.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too
from gpt2tf.evaluate import hellaswag_row


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python datasets/convert_hellaswag.py hellaswag_val.jsonl > hellaswag_mc.jsonl")
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                print(json.dumps(hellaswag_row(json.loads(line)), ensure_ascii=False))


if __name__ == "__main__":
    main()
