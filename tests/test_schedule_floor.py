"""Schedules that scale with the data: the step floor of 2a/2b and augmentation switched on for small sets.

Unit level: ``step_floor`` (schedule in -> schedule out + log line) against step counts worked out by hand,
and ``auto_augment``; the embedded recipes' own schedules stay below the floors' defaults. End to end: a
200-example task on tiny models gets augmentation and the floor in 2a and 2b, says so, and trains that
many steps."""
import json
import math

import pandas as pd
import pytest

from distill.config import AugmentConfig, TaskStageConfig, TrainConfig, load_config
from distill.data.augment import auto_augment
from distill.stages.common import step_floor
from tests.conftest import tiny_overrides


def test_a_small_set_given_in_epochs_is_raised_to_the_floor():
    train = TrainConfig(epochs=3, batch_size=32)
    # 1,915 examples: ceil(1915 / 32) = 60 batches an epoch, 3 epochs = 180 steps; 500 steps = 8.33 epochs
    schedule, line = step_floor(train, 1915, 60, 500, "task_distill.min_steps_2b", "2b", dev_scored=True)
    assert schedule.max_steps == 500 and schedule.epochs == 3 and schedule.eval_every == 180
    assert line == ("[2b] 1,915 examples x 3 epochs = 180 steps < task_distill.min_steps_2b=500: training 500 steps "
                    "(8.3 epochs); dev scored every 180 steps, the best kept")
    assert train.max_steps == 0 and train.eval_every == 0  # the config itself is never changed
    # a stage without a dev score (2a) keeps its eval_every
    schedule, line = step_floor(train, 1915, 60, 500, "task_distill.min_steps_2a", "2a")
    assert schedule.max_steps == 500 and schedule.eval_every == 0 and "dev" not in line


def test_floor_counts_optimizer_steps_with_accumulation_and_fractional_epochs():
    # 100 examples in batches of 8: 13 batches; grad_accum 2: 7 optimizer steps an epoch (the last one alone)
    train = TrainConfig(epochs=1.5, batch_size=8, grad_accum=2)
    # 1.5 epochs: 7 steps + half of 13 batches (7 batches) = 4 steps -> 11 steps
    schedule, line = step_floor(train, 100, 13, 20, "task_distill.min_steps_2a", "2a")
    assert schedule.max_steps == 20
    assert line == ("[2a] 100 examples x 1.5 epochs = 11 steps < task_distill.min_steps_2a=20: training 20 steps "
                    f"({20 / 7:.1f} epochs)")


@pytest.mark.parametrize("changes, min_steps", [
    ({"max_steps": 10}, 500),  # the user chose the steps: no floor, even far below it
    ({}, 0),  # 0 = no floor
    ({"epochs": 9}, 500),  # 60 batches x 9 epochs = 540 steps >= 500
])
def test_no_floor_when_the_user_chose_steps_or_the_schedule_reaches_it(changes, min_steps):
    train = TrainConfig(**{"epochs": 3, "batch_size": 32, **changes})
    schedule, line = step_floor(train, 1915, 60, min_steps, "task_distill.min_steps_2b", "2b", dev_scored=True)
    assert schedule is train and line == ""


def test_an_eval_every_that_scores_dev_within_the_floored_run_is_kept():
    train = TrainConfig(epochs=3, eval_every=50)
    schedule, line = step_floor(train, 1915, 60, 500, "task_distill.min_steps_2b", "2b", dev_scored=True)
    assert schedule.eval_every == 50 and "dev scored" not in line
    # 200 examples, 7 batches, 21 steps: dev every max(21, 500 / 10) = 50 steps, not 24 times
    schedule, _ = step_floor(TrainConfig(epochs=3), 200, 7, 500, "task_distill.min_steps_2b", "2b", dev_scored=True)
    assert schedule.eval_every == 50


# (recipe, training rows, as loaded and tokenized: Rotten Tomatoes 10,201 reviews, CoNLL-2003 14,041 sentences,
# SQuAD 3,000 questions -> 3,364 windows of 256 tokens)
RECIPES = [("experiments/rotten_tomatoes_minilm.yaml", 10201, 319, 479),
           ("experiments/conll2003_minilm.yaml", 14041, 220, 2195),
           ("experiments/squad_minilm.yaml", 3364, 53, 848)]


@pytest.mark.parametrize("recipe, rows, steps_2a, steps_2b", RECIPES)
def test_the_embedded_recipes_run_unchanged_under_the_default_floors(recipe, rows, steps_2a, steps_2b):
    t = load_config(recipe).task_distill
    assert (t.min_steps_2a, t.min_steps_2b) == (TaskStageConfig().min_steps_2a, TaskStageConfig().min_steps_2b)
    for train, floor, key, steps in ((t.intermediate, t.min_steps_2a, "task_distill.min_steps_2a", steps_2a),
                                     (t.prediction, t.min_steps_2b, "task_distill.min_steps_2b", steps_2b)):
        batches = math.ceil(rows / train.batch_size)
        assert math.ceil(train.epochs * batches) == steps  # the recipe's own steps, worked out by hand
        schedule, line = step_floor(train, rows, batches, floor, key, "2x", dev_scored=True)
        assert schedule is train and line == "", (recipe, key, steps)


def test_small_training_sets_are_augmented_unless_told_otherwise():
    aug = AugmentConfig()
    on, line = auto_augment(aug, 200, 0, "sentences")
    assert on and line.startswith("[augment] 200 training sentences < task_distill.augment.auto_below=5,000: "
                                  "augmentation on (4 copies of each, method=embedding)")
    assert auto_augment(aug, 5000, 0) == (False, "")  # not under the threshold
    assert auto_augment(AugmentConfig(auto_below=0), 200, 0) == (False, "")  # 0 = never
    assert auto_augment(AugmentConfig(enabled=True, auto_below=0), 100000, 0) == (True, "")  # asked for
    on, line = auto_augment(aug, 3000, 3000, "questions")  # task.max_train_examples cut a larger set
    assert not on and "task.max_train_examples=3,000" in line
    assert auto_augment(aug, 200, 1000)[0]  # a cap above the set's size cut nothing: the set is small


def test_the_new_keys_leave_earlier_fingerprints_alone_until_they_are_changed(tmp_path):
    from distill.runner.plan import stage_run
    from distill.stages.context import RunContext

    def runs(*overrides):
        ctx = RunContext(load_config(None, [f"output_dir={tmp_path}", "general.enabled=false", *overrides]))
        return stage_run(ctx, "2a"), stage_run(ctx, "2b")

    intermediate, prediction = runs()
    assert set(intermediate.settings["augment"]) == {"enabled", "method", "mlm_model", "copies", "replace_prob",
                                                     "top_k", "batch_size"}  # the keys before auto_below
    assert "min_steps_2a" not in intermediate.settings and "min_steps_2b" not in prediction.settings
    for key, value, changed in (("task_distill.augment.auto_below", 0, "2a"), ("task_distill.min_steps_2a", 7, "2a"),
                                ("task_distill.min_steps_2b", 7, "2b")):
        other = dict(zip(("2a", "2b"), runs(f"{key}={value}")))
        assert other[changed].fingerprint != {"2a": intermediate, "2b": prediction}[changed].fingerprint, key
        assert other["2b"].fingerprint != prediction.fingerprint  # 2b reads 2a's fingerprint


@pytest.fixture()
def small_task(tmp_path):
    """200 training reviews (under auto_below), 20 dev, 20 test, in a folder of their own."""
    folder = tmp_path / "small"
    folder.mkdir()
    good = ["wonderful", "moving", "clever", "charming", "brilliant"]
    bad = ["dreadful", "boring", "clumsy", "tedious", "awful"]
    rows = [{"text": f"a {(good if i % 2 else bad)[i % 5]} film about a {['farmer', 'sailor', 'teacher'][i % 3]} "
                     f"and her {['horse', 'garden', 'city'][i % 3]}",
             "label": "pos" if i % 2 else "neg"} for i in range(240)]
    frame = pd.DataFrame(rows)
    frame.iloc[:200].to_csv(folder / "train.csv", index=False)
    frame.iloc[200:220].to_csv(folder / "dev.csv", index=False)
    frame.iloc[220:].to_csv(folder / "test.csv", index=False)
    return folder


def test_a_200_example_task_gets_augmentation_and_the_step_floor_in_2a_and_2b(tmp_path, tiny_teacher_dir,
                                                                              small_task, capsys):
    from distill.runner.plan import build, stage_run
    from distill.stages.context import RunContext

    per_stage = ["epochs=1", "batch_size=32", "save_every=0", "log_every=1"]
    cfg = load_config(None, tiny_overrides(
        tmp_path, tiny_teacher_dir, small_task, "general.enabled=false",
        "teacher.gate=warn",  # a 3-step tiny teacher learns nothing
        "teacher.finetune.max_steps=3", "teacher.finetune.batch_size=8", "teacher.finetune.save_every=0",
        "task_distill.augment.copies=1", "task_distill.min_steps_2a=30", "task_distill.min_steps_2b=25",
        *[f"task_distill.intermediate.{s}" for s in per_stage], *[f"task_distill.prediction.{s}" for s in per_stage]))
    ctx = RunContext(cfg)
    build(ctx, "2b")
    out = capsys.readouterr().out
    # 200 reviews + 1 copy each = 400 rows: ceil(400 / 32) = 13 steps an epoch
    assert out.count("[augment] 200 training examples < task_distill.augment.auto_below=5,000: augmentation on "
                     "(1 copy of each, method=embedding)") == 1
    assert ("[2a] 400 examples x 1 epochs = 13 steps < task_distill.min_steps_2a=30: training 30 steps (2.3 epochs)"
            in out)
    assert ("[2b] 400 examples x 1 epochs = 13 steps < task_distill.min_steps_2b=25: training 25 steps (1.9 epochs); "
            "dev scored every 13 steps, the best kept" in out)
    # the floored 2a makes 2.3 passes, so the teacher feature cache pays (the recipe's own 1 epoch would not)
    assert "2a makes 1 pass over its data" not in out and "of 400 examples computed once" in out
    intermediate = json.loads((stage_run(ctx, "2a").dir / "result.json").read_text())
    prediction = json.loads((stage_run(ctx, "2b").dir / "result.json").read_text())
    assert intermediate["steps"] == 30 and intermediate["train_examples"] == 400
    assert prediction["steps"] == 25
    scored = [json.loads(line)["step"] for line in (stage_run(ctx, "2b").dir / "metrics.jsonl").read_text().splitlines()
              if "dev_score" in line]
    assert scored == [13, 25]  # dev at the end of the recipe's own schedule and of the floored run
