"""Fine-tuning and training from scratch, on one device or several.

    config.py      TrainConfig: the fine-tuning defaults and every check on them (no TensorFlow)
    schedules.py   the learning-rate schedule
    optimizers.py  precision, Adafactor, the optimizer a config names
    lora.py        LoRA adapters, attached through the model's adapter hook
    trainer.py     the compiled step and validation (through `gpt2tf.score`)
    rundir.py      the run dir: step-numbered checkpoints, metrics, its lock
    distribute.py  the tf.distribute strategy a run uses
    loop.py        finetune(config): where a run starts from, the loop, what it writes

`gpt2tf.train.TrainConfig` and `gpt2tf.train.finetune` are the API; the names below are re-exported lazily, so
importing `gpt2tf.train.config` (as the command line does) loads no TensorFlow.
"""

from gpt2tf._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "TrainConfig": "gpt2tf.train.config",
        "configure": "gpt2tf.train.config",
        "default_output_dir": "gpt2tf.train.config",
        "H5_DIR": "gpt2tf.train.config",
        "HPARAM_FIELDS": "gpt2tf.train.config",
        "STATE_LAYOUT": "gpt2tf.train.trainer",
        "finetune": "gpt2tf.train.loop",
        "LoRA": "gpt2tf.train.lora",
        "Adafactor": "gpt2tf.train.optimizers",
        "make_optimizer": "gpt2tf.train.optimizers",
        "resolve_precision": "gpt2tf.train.optimizers",
        "LearningRate": "gpt2tf.train.schedules",
        "RunDir": "gpt2tf.train.rundir",
        "STATE_DIR": "gpt2tf.train.rundir",
        "WEIGHTS_PREFIX": "gpt2tf.train.rundir",
        "step_of": "gpt2tf.train.rundir",
        "Trainer": "gpt2tf.train.trainer",
        "Validation": "gpt2tf.train.trainer",
    },
)
