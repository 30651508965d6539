"""The training step: a model, the variables it trains, their optimizer and the compiled step; and validation
through the evaluation's scoring path."""

import math

import numpy as np
import tensorflow as tf

from gpt2tf.data import TokenStream
from gpt2tf.formats.tensors import checkpoint_key, model_tensors
from gpt2tf.score import score, text_units, windows
from gpt2tf.train.distribute import make_distribution
from gpt2tf.train.lora import LoRA
from gpt2tf.train.optimizers import make_optimizer

# The training state's layout, saved with it. 2: optimizer slots shaped like the model's variables, whose projection
# weights are held transposed (gpt2tf.model.Conv1D); states saved before that carry no layout.
STATE_LAYOUT = 2


class Trainer:
    """A model, the variables it trains, their optimizer, and the train and eval steps compiled once."""

    def __init__(self, model, config, *, loss_scaling=False, distribution=None):
        """`model` must have been built in `distribution.scope()` (its variables mirrored on every replica)."""
        self.model, self.config = model, config
        self.dist = distribution or make_distribution("none")
        with self.dist.scope():
            self.lora = (
                LoRA(model, rank=config.lora_rank, alpha=config.lora_alpha, seed=config.seed)
                if config.lora_rank
                else None
            )
            model.recompute = config.recompute
            if self.lora:
                self.variables = self.lora.variables
            elif config.only_train_transformer_layers:
                self.variables = [v for v in model.trainable_variables if checkpoint_key(v).startswith("model/h")]
            else:
                self.variables = list(model.trainable_variables)
            self.loss_scaling = loss_scaling
            self.optimizer = make_optimizer(config, self.variables, loss_scaling=loss_scaling)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # steps tried (fp16 may skip)
            self.data_index = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_index")  # batches consumed
            self.state = tf.train.Checkpoint(
                optimizer=list(self.optimizer.variables),
                step=self.step,
                data_index=self.data_index,
                adapters=self.lora.variables if self.lora else [],
                layout=tf.Variable(STATE_LAYOUT, dtype=tf.int64, trainable=False),
            )
        # The step sums the gradients across replicas itself, before the optimizer clips them (Keras clips each
        # replica's part first, then sums: not what one device computes); so the optimizer must not sum again.
        for optimizer in (self.optimizer, getattr(self.optimizer, "inner_optimizer", None)):
            if optimizer is not None:
                optimizer._all_reduce_sum_gradients = list
        # XLA compiles the forward and backward pass; the optimizer's update runs outside it, because XLA on CPU
        # writes updated variables to new buffers: a second copy of the weights (1558M would not fit in 24 GB).
        # No autograph: the steps are plain TF code, and converting Keras' internals only slows tracing.
        self._grads = tf.function(self._loss_and_grads, jit_compile=config.xla, autograph=False)
        self._summed = tf.function(
            lambda t, w, total: self.dist.run(self._replica_grads, (t, w, total)), autograph=False
        )
        self._apply = tf.function(lambda grads: self.dist.run(self._replica_apply, (grads,)), autograph=False)

    def _loss_and_grads(self, tokens, weights, total_weight):
        with tf.GradientTape() as tape:
            logits = self.model(tokens[:, :-1])  # [batch, length, n_vocab] float32
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:], logits=logits)
            loss = tf.reduce_sum(losses * weights) / total_weight
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        grads = tape.gradient(scaled, self.variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]  # embedding gathers give IndexedSlices

    def _replica_grads(self, tokens, weights, total_weight):
        """A replica's part of a step: `tokens [micro, its batch, length + 1]`, `weights [micro, its batch, length]`;
        the loss and gradients of the whole global batch (summed over replicas), the same on every replica."""
        # Each micro-batch's loss is divided by the weight of the whole global batch, so the summed gradients are
        # exactly those of one micro * batch batch on one device (and padding counts nowhere).
        loss, grads = self._grads(tokens[0], weights[0], total_weight)
        if self.config.accumulate_gradients > 1:  # a while loop: one micro-batch's activations live at a time

            def body(i, loss, grads):
                micro_loss, micro_grads = self._grads(tokens[i], weights[i], total_weight)
                return i + 1, loss + micro_loss, [g + m for g, m in zip(grads, micro_grads)]

            _, loss, grads = tf.while_loop(lambda i, *_: i < tf.shape(tokens)[0], body, (1, loss, grads))
        if self.dist.replicas > 1:
            loss, *grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, [loss, *grads])
        return loss, grads

    def _replica_apply(self, grads):
        self.optimizer.apply(grads, self.variables)

    def train_step(self, tokens, weights):
        """One optimizer step on the global batch `tokens [micro, batch, length + 1]` and loss `weights [micro,
        batch, length]`; returns its loss (a float). A non-finite loss leaves the weights alone (with loss scaling,
        the scaler skips the step and lowers the scale)."""
        total_weight = tf.constant(max(float(np.sum(weights, dtype=np.float64)), 1.0), tf.float32)
        loss, grads = self._summed(
            self.dist.split(tokens, tf.int32), self.dist.split(weights, tf.float32), total_weight
        )
        loss = float(self.dist.first(loss))
        if self.loss_scaling or math.isfinite(loss):
            self._apply(grads)
        self.step.assign_add(1)
        self.data_index.assign_add(len(tokens))
        return loss

    @property
    def learning_rate(self):
        return float(self.optimizer.learning_rate)

    def weights_to_save(self):
        """{checkpoint key: tensor}: the model as plain GPT-2 weights (LoRA merged)."""
        if self.lora:
            return self.lora.merged_tensors(self.model)
        return model_tensors(self.model)

    def weights_are_finite(self):
        return all(bool(tf.reduce_all(tf.math.is_finite(v.value))) for v in self.variables)


class Validation:
    """The validation set scored whole (or its first `limit` sequences), through the evaluation's scoring path:
    a token stream in disjoint windows of `length` tokens as `evaluate.perplexity` scores a text, examples one
    sequence each (their completion only when training counts only that). The report is the perplexity task's:
    scored_tokens, mean_nll, perplexity, bits_per_byte, word_perplexity."""

    def __init__(self, data, *, length, limit, encoder):
        if isinstance(data, TokenStream):
            tokens = [int(t) for t in data.tokens]
            self.items = [(tokens[b:e], first) for b, e, first in windows(len(tokens), context=length, stride=length)]
        else:
            self.items = []
            for i in range(len(data)):
                ids, prompt = data.example(i, length)
                self.items.append(([int(t) for t in ids], prompt if data.loss_on == "completion" else 0))
        if limit:
            self.items = self.items[:limit]
        scored_text = [
            encoder.decode([t for t in ids[max(start, 1) :] if t != encoder.eot_id]) for ids, start in self.items
        ]
        self.n_bytes = sum(text_units(t)[0] for t in scored_text)
        self.n_words = sum(text_units(t)[1] for t in scored_text)

    def run(self, model, *, jit_compile=True):
        scored = score(model, self.items, jit_compile=jit_compile)
        total = sum(-float(log_p.sum()) for log_p, _ in scored)
        count = sum(len(log_p) for log_p, _ in scored)
        return {
            "scored_tokens": count,
            "mean_nll": total / count,
            "perplexity": math.exp(min(total / count, 50)),
            "bits_per_byte": total / max(self.n_bytes, 1) / math.log(2),
            "word_perplexity": math.exp(min(total / max(self.n_words, 1), 50)),
        }
