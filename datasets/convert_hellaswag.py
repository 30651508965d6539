"""Convert HellaSwag's validation file to the rows `evaluate.py --task multiple_choice` reads.

    python datasets/convert_hellaswag.py hellaswag_val.jsonl > hellaswag_mc.jsonl

HellaSwag's rows (`hellaswag_val.jsonl` from its authors) have `activity_label`, `ctx_a`, `ctx_b`, `endings` and
`label`. As lm-evaluation-harness builds them: context = activity_label + ": " + ctx_a + " " + ctx_b capitalized,
each ending prefixed by a space; its light cleanup of the text (" [title]" -> ". ", "[header]"-style tags and
double spaces removed) is applied to both.
"""

import json
import re
import sys


def clean(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def convert(row):
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"context": clean(row["activity_label"] + ": " + context),
            "endings": [" " + clean(ending) for ending in row["endings"]], "label": int(row["label"])}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                print(json.dumps(convert(json.loads(line)), ensure_ascii=False))


if __name__ == "__main__":
    main()
