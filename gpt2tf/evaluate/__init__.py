"""Evaluating a model as the field does: perplexity, LAMBADA, multiple choice and CNN/Daily Mail ROUGE.

    tasks.py    the tasks' definitions (`perplexity`, `lambada`, `multiple_choice`, `summarize`, ...), on the one
                scoring path (`gpt2tf.score`) and the one decode path (`gpt2tf.decode`)
    rouge.py    sentences and ROUGE (`rouge-score`), as papers report them
    command.py  the `evaluate` command: EvaluateConfig and run

The task functions are re-exported here (`gpt2tf.evaluate.perplexity(model, tokens, ...)`), lazily: importing the
command's config loads no TensorFlow.
"""

from gpt2tf._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **{
            name: "gpt2tf.evaluate.tasks"
            for name in (
                "perplexity",
                "continuations",
                "lambada",
                "multiple_choice",
                "hellaswag_row",
                "summarize",
                "read_jsonl",
                "TASKS",
                "UNITS",
            )
        },
        "text_units": "gpt2tf.score",
        **{name: "gpt2tf.evaluate.command" for name in ("EvaluateConfig", "TASK_NAMES", "check", "run", "table")},
    },
)
