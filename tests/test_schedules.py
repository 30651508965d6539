"""The learning-rate schedule: the ancestor's step decay at its boundaries, warmup, cosine, serialization."""

import math

import keras
import pytest

from gpt2tf.errors import GPT2TFError
from gpt2tf.train.config import parse_epochs
from gpt2tf.train.schedules import LearningRate


def lr(schedule, step):
    return float(schedule(step))


def test_decay_epochs_4_5_with_5_epochs_decays_only_the_last_epoch():
    schedule = LearningRate(1e-4, steps_per_epoch=2000, decay_epochs=parse_epochs("4,5"), decay_lr=0.1)
    for step in (0, 1, 1999, 2000, 7999):  # epochs 0..3
        assert lr(schedule, step) == pytest.approx(1e-4)
    for step in (8000, 8001, 9999):  # epoch 4, the fifth and last
        assert lr(schedule, step) == pytest.approx(1e-5)
    assert lr(schedule, 10000) == pytest.approx(1e-6)  # epoch 5 would exist only with a sixth epoch


def test_each_decay_epoch_multiplies_once_and_order_does_not_matter():
    schedule = LearningRate(1.0, steps_per_epoch=10, decay_epochs=(3, 1), decay_lr=0.5)
    assert [lr(schedule, s) for s in (9, 10, 29, 30, 99)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])


def test_no_decay_epochs_is_constant():
    schedule = LearningRate(3e-4, steps_per_epoch=5, decay_epochs=parse_epochs(""))
    assert lr(schedule, 0) == lr(schedule, 10**6) == pytest.approx(3e-4)


def test_warmup_is_linear_then_the_step_schedule():
    schedule = LearningRate(1.0, steps_per_epoch=100, decay_epochs=(1,), decay_lr=0.1, warmup_steps=4)
    assert [lr(schedule, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lr(schedule, 100) == pytest.approx(0.1)


def test_cosine_goes_from_base_to_base_times_decay_lr():
    schedule = LearningRate(1.0, steps_per_epoch=10, decay_lr=0.1, kind="cosine", total_steps=100)
    assert lr(schedule, 0) == pytest.approx(1.0)
    assert lr(schedule, 50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr(schedule, 100) == pytest.approx(0.1)
    assert lr(schedule, 1000) == pytest.approx(0.1)
    warm = LearningRate(1.0, steps_per_epoch=10, decay_lr=0.0, kind="cosine", total_steps=110, warmup_steps=10)
    assert lr(warm, 4) == pytest.approx(0.5)
    assert lr(warm, 60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_serializable():
    schedule = LearningRate(2e-4, steps_per_epoch=7, decay_epochs=(2,), decay_lr=0.3, warmup_steps=3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, LearningRate)
    assert [lr(restored, s) for s in (0, 13, 14, 30)] == pytest.approx([lr(schedule, s) for s in (0, 13, 14, 30)])
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    again = keras.optimizers.Adam.from_config(optimizer.get_config())  # an optimizer's config round-trips the schedule
    assert isinstance(again._learning_rate, LearningRate)
    assert [lr(again._learning_rate, s) for s in (0, 13, 14, 30)] == pytest.approx(
        [lr(schedule, s) for s in (0, 13, 14, 30)]
    )


def test_bad_decay_epochs_is_a_user_error():
    assert parse_epochs(" 4, 5 ") == (4, 5)
    with pytest.raises(GPT2TFError, match="decay_epochs"):
        parse_epochs("4;5")
