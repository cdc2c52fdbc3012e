"""The faster CPU dropout masks must be the masks PyTorch draws, bit for bit, and leave the generator
where PyTorch leaves it: a run with them is the run without them, only sooner."""
import copy

import pytest
import torch
from torch._C import _len_torch_dispatch_stack
from torch.utils.data import DataLoader
from transformers import BertForSequenceClassification

from distill.engine import fast_dropout

from distill.engine import trainer
from distill.config import TrainConfig
from distill.engine.fast_dropout import FastBernoulli, fill_mask
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective
from tests.conftest import tiny_config


@pytest.mark.parametrize("shape, p, dtype", [((32, 12, 52, 52), 0.9, torch.float32), ((7, 5, 384), 0.9, torch.float32),
                                             ((4097,), 0.5, torch.float64), ((64, 100), 0.1, torch.bfloat16),
                                             ((50, 100), 1.0, torch.float32), ((50, 100), 0.0, torch.float16)])
def test_fill_mask_is_bernoulli_bit_for_bit_and_leaves_the_generator_where_it_does(shape, p, dtype):
    torch.manual_seed(3)
    expected = torch.empty(shape, dtype=dtype).bernoulli_(p)
    after_expected = torch.get_rng_state()
    torch.manual_seed(3)
    mine = fill_mask(torch.empty(shape, dtype=dtype), p, torch.empty(expected.numel(), dtype=torch.int64))
    assert torch.equal(mine, expected) and mine.dtype == dtype
    assert torch.equal(torch.get_rng_state(), after_expected)
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)  # an explicit generator too
    expected = torch.empty(shape, dtype=dtype).bernoulli_(p, generator=gen_a)
    assert torch.equal(fill_mask(torch.empty(shape, dtype=dtype), p, torch.empty(expected.numel(), dtype=torch.int64),
                                 gen_b), expected)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    torch.manual_seed(4)  # drawn in chunks of a smaller buffer: the same numbers in the same order
    expected = torch.empty(shape, dtype=dtype).bernoulli_(p)
    torch.manual_seed(4)
    assert torch.equal(fill_mask(torch.empty(shape, dtype=dtype), p, torch.empty(1000, dtype=torch.int64)), expected)


def _student(attention: str):
    torch.manual_seed(3)
    model = BertForSequenceClassification(tiny_config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                      intermediate_size=96))
    model.set_attn_implementation(attention)
    return model.train()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_training_forward_under_the_mode_is_the_plain_one(attention):
    """nn.Dropout modules and the attention-probability dropout (inside SDPA's math path, or eager's
    functional dropout) all draw through bernoulli_: outputs, gradients and generator state match."""
    model = _student(attention)
    ids = torch.randint(1000, 2000, (8, 40))
    mask = torch.ones_like(ids)
    mask[:3, 25:] = 0
    results = []
    for fast in (False, True):
        model.zero_grad()
        torch.manual_seed(11)
        mode = FastBernoulli()
        with mode if fast else torch.enable_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out.logits.sum().backward()
        results.append((out.hidden_states, [p.grad.clone() for p in model.parameters()], torch.get_rng_state(),
                        mode.filled))
    (hidden_a, grads_a, rng_a, _), (hidden_b, grads_b, rng_b, filled) = results
    assert filled >= 2 * 2  # per layer: attention probabilities and at least one hidden dropout
    assert all(torch.equal(a, b) for a, b in zip(hidden_a, hidden_b))
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert torch.equal(rng_a, rng_b)


def test_calls_it_cannot_take_go_to_pytorch():
    """A strided target, a small one, or a build whose kernel draws otherwise: PyTorch's own kernel runs."""
    mode = FastBernoulli()
    torch.manual_seed(5)
    expected = torch.empty(300, 200).t().bernoulli_(0.7)
    torch.manual_seed(5)
    with mode:
        strided = torch.empty(300, 200).t().bernoulli_(0.7)
        small = torch.empty(10).bernoulli_(0.5)
    assert torch.equal(strided, expected) and mode.filled == 0


def test_a_pytorch_that_draws_otherwise_is_left_alone(monkeypatch):
    monkeypatch.setattr(fast_dropout, "_SAME_AS_TORCH", None)
    monkeypatch.setattr(fast_dropout, "fill_mask", lambda target, p, scratch, generator=None: target.fill_(1.0))
    assert not fast_dropout.same_as_torch()  # the check compares against this PyTorch's own draws
    mode = FastBernoulli()
    with mode:
        mask = torch.empty(100, 100).bernoulli_(0.5)
    assert mode.filled == 0 and 0 < float(mask.mean()) < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the trainer installs the CPU masks only when it trains on CPU")
def test_the_training_loop_draws_masks_the_fast_way_and_trains_the_same_weights(tiny_teacher_dir, tokenizer,
                                                                                tmp_path, monkeypatch):
    """Three distillation steps with dropout: the same losses and weights as with PyTorch's kernel."""
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    texts = ["a wonderful, moving and very funny film about two brothers who never speak", "dull", "not good",
             "the best thing this year, by far, and I mean it"] * 8
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 0, 1] * 8)
    student = _student("sdpa")
    cfg = TrainConfig(max_steps=3, batch_size=32, lr=1e-3, warmup_ratio=0.0, log_every=1, save_every=0,
                      eval_every=0, mixed_precision="no")
    losses = {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_scores_mse": 1.0}
    counted = []

    class Counting(FastBernoulli):
        def remove(self):
            counted.append(self.filled)
            super().remove()

    class Off(FastBernoulli):
        def install(self, model):
            return self
    runs = []
    for fast in (False, True):
        monkeypatch.setattr(trainer, "FastBernoulli", Counting if fast else Off)
        torch.manual_seed(5)  # the student->teacher projections start equal
        objective = DistillObjective(copy.deepcopy(student), teacher, build_layer_map(losses, "uniform", 2, 2))
        result = trainer.train(objective, DataLoader([batch] * 3, batch_size=None), cfg, tmp_path / str(fast),
                               save_model=lambda m, f: None, seed=1)
        runs.append(([h["loss"] for h in result.history], [p.detach().clone() for p in objective.trainable.parameters()]))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert counted and counted[-1] >= 3 * 2 * 2  # 3 steps, 2 layers, attention and hidden dropouts
    assert not objective.trainable.student.bert.encoder.layer[0].attention.self._forward_pre_hooks  # taken off
    assert _len_torch_dispatch_stack() == 0
    assert losses_a == losses_b
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))


def test_installed_hooks_switch_the_mode_on_only_where_a_training_pass_draws_masks():
    """Through ``install`` (the trainer's way): every mask of a training forward is filled (embeddings, and per
    layer the attention probabilities and two hidden dropouts; the classifier's is too small), evaluation
    takes no detour, and the mode is off between passes, after an error and after a KeyboardInterrupt."""
    model = _student("sdpa")
    ids = torch.randint(1000, 2000, (8, 40))

    def hooks():  # (transformers registers hooks of its own)
        return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]

    plain = hooks()
    mode = FastBernoulli().install(model)
    model(input_ids=ids)
    assert mode.filled == 1 + 3 * 2 and _len_torch_dispatch_stack() == 0
    model.eval()
    model(input_ids=ids)
    assert mode.filled == 7 and _len_torch_dispatch_stack() == 0
    model.train()
    value = model.bert.encoder.layer[1].attention.self.value

    def interrupt(*_args):
        raise KeyboardInterrupt  # torch runs always_call hooks for Exceptions only

    handle = value.register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        model(input_ids=ids)
    handle.remove()
    mode.remove()  # what the trainer's finally does
    assert _len_torch_dispatch_stack() == 0 and hooks() == plain
    mode.install(model)
    mode.install(model)  # twice: the first hooks are replaced, not doubled
    before = mode.filled
    model(input_ids=ids)
    assert mode.filled == before + 7 and _len_torch_dispatch_stack() == 0
    mode.remove()
    assert hooks() == plain
