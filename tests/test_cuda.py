"""What only a CUDA machine shows: the trainer under bf16 and under fp16 (loss scaling), the teacher feature
cache and logit cache built on the GPU, the NER and QA losses on the GPU against the CPU, export of a model
trained on the GPU, and the 2-process path over NCCL. Every test name holds "cuda" (`pytest -k cuda`); each is
skipped on a machine without CUDA (the 2-process one without two GPUs).

Tolerances: fp32 on CUDA against fp32 on the CPU differ only by the order of summation (PyTorch leaves TF32
off for matmuls), about 1e-6 relative, so FP32_RTOL = 1e-4. Under bf16 autocast every matmul rounds its inputs
to 8 significant bits (2^-8 = 0.4% relative); the tiny 4-layer models here compound a few such roundings, so
BF16_RTOL = 2e-2 of the compared values' scale. Each check also makes sure the compared quantities move by
more than that tolerance where they should (a check that cannot fail is worse than none)."""
import json
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertForQuestionAnswering, BertForTokenClassification

from distill.config import TrainConfig
from distill.data.task_data import load_local
from distill.engine.batching import make_loader
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective, FineTuneObjective
from distill.engine.placement import placement
from distill.tasks.sequence_classification import tokenize
from tests.conftest import tiny_config
from tests.precision import BF16_RTOL

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")

FP32_RTOL = 1e-4  # fp32 on both sides: only the summation order differs


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: leave it as found."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _on(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _worst_relative(got: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    return float(np.abs(np.asarray(got) - np.asarray(reference)).max() / np.abs(np.asarray(reference)).max())


# --- the trainer under bf16 and under fp16 --------------------------------------------------------------------

def check_precision_trains_and_resumes(tmp_path, teacher_dir, task_folder, tokenizer, precision: str) -> dict:
    """6 steps of the one training loop in ``precision``; then a run killed at step 5 (after its step-4
    checkpoint) and resumed. Runs on whatever device the trainer's accelerator picks."""
    from tests.test_trainer import Crash, CrashingObjective, _run, _setup

    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-3, save_every=2, log_every=1, warmup_ratio=0.0,
                      mixed_precision=precision)
    model, loader = _setup(teacher_dir, task_folder, tokenizer)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dtypes = []
    model.classifier.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    result = _run(FineTuneObjective(model), loader, tmp_path / "a", tokenizer, cfg)
    assert result.step == 6 and all(np.isfinite(r["loss"]) for r in result.history), result.history
    assert set(dtypes) == {{"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[precision]}
    reference = load_file(tmp_path / "a" / "model" / "model.safetensors")
    assert all(t.dtype != torch.bfloat16 and t.dtype != torch.float16 for t in reference.values())  # fp32 masters
    moved = max(float((reference[k] - initial[k].cpu()).abs().max()) for k in reference if k in initial)
    assert moved > 1e-3, f"6 steps at lr 1e-3 moved no weight by more than {moved}"

    model, loader = _setup(teacher_dir, task_folder, tokenizer)
    with pytest.raises(Crash):
        _run(CrashingObjective(model, crash_at=5), loader, tmp_path / "b", tokenizer, cfg)
    checkpoint = tmp_path / "b" / "checkpoint"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 4
    # fp16 trains with a loss scale (GradScaler), saved with the checkpoint so a resumed run scales as it did
    assert (checkpoint / "scaler.pt").is_file() == (precision == "fp16"), sorted(p.name for p in checkpoint.iterdir())

    model, loader = _setup(teacher_dir, task_folder, tokenizer)
    objective = CrashingObjective(model, crash_at=0)  # counts the batches it trains on
    resumed_result = _run(objective, loader, tmp_path / "b", tokenizer, cfg)
    assert resumed_result.step == 6 and objective.calls == 2  # steps 5 and 6 only
    resumed = load_file(tmp_path / "b" / "model" / "model.safetensors")
    # the same batches, weights, optimizer and loss scale: the uninterrupted run's weights, up to the GPU's
    # summation order (a last-bit difference can move one bf16/fp16 rounding); 1e-4 is under a tenth of
    # what the steps moved the weights (checked above)
    worst = max(float((resumed[k] - reference[k]).abs().max()) for k in reference)
    assert worst < 1e-4, f"resumed run ends {worst} away from the uninterrupted one"
    return {"moved": moved, "resume_diff": worst}


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_trainer_under_mixed_precision_trains_and_resumes(tmp_path, tiny_teacher_dir, task_folder, tokenizer,
                                                                precision):
    measured = check_precision_trains_and_resumes(tmp_path, tiny_teacher_dir, task_folder, tokenizer, precision)
    print(f"\n[cuda {precision}] {measured}")


# --- the teacher feature cache and the logit cache, built on the GPU ------------------------------------------

def check_feature_cache_against_live_passes(tmp_path, teacher_dir, tokenizer, capsys, mixed_precision: str) -> float:
    """2a's feature cache built on the placement of ``mixed_precision``; the loss terms read from it against
    the live teacher on that placement and in full precision on the CPU. Returns the worst relative term
    difference from the CPU pass."""
    from distill.engine import feature_cache
    from tests.test_feature_cache import TINYBERT, CountingTap, _batches, _ctx, _objective, _terms, _train_set

    ctx = _ctx(tmp_path, tokenizer)
    ctx.cfg.task_distill.intermediate.mixed_precision = mixed_precision
    place = placement(mixed_precision)
    objective = _objective(teacher_dir, TINYBERT)
    data = feature_cache.prepare(ctx, objective, teacher_dir, _train_set(tokenizer))
    assert "computed once" in capsys.readouterr().out and objective.feature_cache is not None
    assert next(objective.teacher.parameters()).device.type == "cpu"  # the build gave the teacher back
    batches = _batches(data, tokenizer)
    with torch.no_grad():
        cpu_fp32 = _terms(objective, batches, cached=False)  # the live teacher, full precision, on the CPU
        objective.to(place.device)
        on_device = [_on(b, place.device) for b in batches]
        with place.autocast():
            live = _terms(objective, on_device, cached=False)  # the live teacher as 2a runs it
            objective.teacher_tap = CountingTap(objective.teacher_tap)
            read = _terms(objective, on_device, cached=True)
    assert objective.teacher_tap.calls == 0  # every teacher feature came from the cache
    worst = 0.0
    for c, d, r in zip(cpu_fp32, live, read):
        assert set(r) == set(d)
        for name in r:  # the cache holds bf16 features rounded to float16: within bf16 tolerance of both
            assert r[name] == pytest.approx(d[name], rel=BF16_RTOL), name
            assert r[name] == pytest.approx(c[name], rel=BF16_RTOL), name
            worst = max(worst, abs(r[name] - c[name]) / abs(c[name]))
    return worst


@needs_cuda
def test_cuda_feature_cache_entries_match_a_live_pass_within_bf16_tolerance(tmp_path, tiny_teacher_dir, tokenizer,
                                                                             capsys):
    place = placement("auto")  # as 2a trains on a GPU: bf16 (fp16 on a card without it)
    assert place.device.type == "cuda" and place.dtype is not None
    worst = check_feature_cache_against_live_passes(tmp_path, tiny_teacher_dir, tokenizer, capsys, "auto")
    with capsys.disabled():
        print(f"\n[cuda feature cache] worst relative term difference from the fp32 CPU pass: {worst:.2e}")


def _decisive_teacher(teacher_dir):
    """The tiny teacher with its classifier scaled up: logits of a few units, so tolerances relative to them
    and row identity are meaningful."""
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)
    return teacher


def check_logit_cache_against_a_live_pass(tmp_path, teacher_dir, tokenizer, capsys, mixed_precision: str) -> float:
    """The teacher-logit cache built on the placement of ``mixed_precision`` against the teacher run one
    example at a time in full precision on the CPU. Returns the worst relative difference."""
    from distill.stages.common import cache_teacher_logits

    teacher = _decisive_teacher(teacher_dir)
    words = "a truly wonderful and moving film about an old town by the sea in winter".split()
    sizes = [3, 14, 1, 9, 6, 12, 2, 15, 5, 8, 11, 4]
    data = tokenize(Dataset.from_dict({"text": [" ".join(words[:n]) for n in sizes], "label": [0, 1] * 6}),
                    tokenizer, 32)
    ctx = SimpleNamespace(run_dir=tmp_path, loader=lambda split, bs, dataset=None: make_loader(dataset, tokenizer, bs,
                                                                                              shuffle=False))
    objective = SimpleNamespace(output_only=True, kind=None)
    first = cache_teacher_logits(ctx, objective, teacher, data, mixed_precision)
    assert "computed once" in capsys.readouterr().out
    assert next(teacher.parameters()).device.type == "cpu"  # given back where it was
    second = cache_teacher_logits(ctx, objective, teacher, data, mixed_precision)
    assert "reused from" in capsys.readouterr().out and second["teacher_logits"] == first["teacher_logits"]
    cached = np.asarray(first["teacher_logits"])
    with torch.no_grad():  # reference: one example at a time, full precision, on the CPU
        reference = np.stack([teacher(input_ids=torch.tensor([row["input_ids"]]),
                                      token_type_ids=torch.tensor([row["token_type_ids"]])).logits[0].numpy()
                              for row in data])
    worst = _worst_relative(cached, reference)
    assert worst < BF16_RTOL, f"cached bf16 logits {worst:.3g} (relative) from the fp32 pass"
    return worst


@needs_cuda
def test_cuda_logit_cache_entries_match_a_live_pass_within_bf16_tolerance(tmp_path, tiny_teacher_dir, tokenizer,
                                                                           capsys):
    assert placement("auto").device.type == "cuda"
    worst = check_logit_cache_against_a_live_pass(tmp_path, tiny_teacher_dir, tokenizer, capsys, "auto")  # as 2b
    with capsys.disabled():
        print(f"\n[cuda logit cache] worst relative difference from the fp32 CPU pass: {worst:.2e}")


# --- NER and QA losses on the GPU against the CPU -------------------------------------------------------------

def _token_objective_and_batch(tokenizer):
    from distill.tasks import TOKEN_CLASSIFICATION
    from students.build import build_student
    from students.presets import StudentShape
    from tests.test_ner_models import NAMES, SENTENCES

    torch.manual_seed(0)
    teacher = BertForTokenClassification(tiny_config(num_labels=len(NAMES), id2label=dict(enumerate(NAMES)),
                                                     label2id={n: i for i, n in enumerate(NAMES)})).eval()
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)
    data = Dataset.from_dict({"tokens": [t for t, _ in SENTENCES], "tags": [g for _, g in SENTENCES]})
    rows = TOKEN_CLASSIFICATION.tokenize(data, tokenizer, 32, "test")
    loader = make_loader(rows, tokenizer, 6, False, collator=TOKEN_CLASSIFICATION.collator(tokenizer))
    student = build_student(StudentShape(2, 32, 4, 32), teacher, kind="token", label_names=NAMES, init="teacher")
    return student, teacher, TOKEN_CLASSIFICATION, next(iter(loader))


def _qa_objective_and_batch(tokenizer):
    from distill.tasks.question_answering import QuestionAnswering
    from students.build import build_student
    from students.presets import StudentShape
    from tests.qa_data import article

    torch.manual_seed(0)
    teacher = BertForQuestionAnswering(tiny_config()).eval()
    with torch.no_grad():
        teacher.qa_outputs.weight.mul_(30)
    records = [{"id": qa["id"], "title": "x", "context": p["context"], "question": qa["question"],
                "answers": {"text": [a["text"] for a in qa["answers"]],
                            "answer_start": [a["answer_start"] for a in qa["answers"]]}}
               for p in article("x", 0)["paragraphs"] for qa in p["qas"]]
    kind = QuestionAnswering(doc_stride=16, max_question_len=16)
    windows = kind.tokenize(Dataset.from_list(records), tokenizer, 48, "train")
    loader = make_loader(windows, tokenizer, 6, False, collator=kind.collator(tokenizer))
    student = build_student(StudentShape(2, 32, 4, 32), teacher, kind="qa", init="teacher")
    return student, teacher, kind, next(iter(loader))


def check_task_losses_across_placements(build, tokenizer, place) -> dict:
    """soft_ce + hard_ce of one batch: fp32 on the CPU (the reference), fp32 and ``place``'s precision on
    ``place``'s device. Returns the worst relative difference of each."""
    student, teacher, kind, batch = build(tokenizer)
    student.eval()
    objective = DistillObjective(student, teacher, build_layer_map({"soft_ce": 1.0, "hard_ce": 1.0}, "uniform", 2, 4),
                                 temperature=2.0, kind=kind)
    objective.trainable.eval()
    with torch.no_grad():
        reference_total, reference = objective(batch)
        objective.to(place.device)
        on_device = _on(batch, place.device)
        fp32_total, fp32 = objective(on_device)
        with place.autocast():
            mixed_total, mixed = objective(on_device)
    assert reference["soft_ce"] > 0 and reference["hard_ce"] > 0
    worst = {}
    for name, rtol, total, terms in (("fp32", FP32_RTOL, fp32_total, fp32), ("mixed", BF16_RTOL, mixed_total, mixed)):
        assert total.device.type == place.device.type
        assert float(total) == pytest.approx(float(reference_total), rel=rtol), name
        for term in reference:
            assert terms[term] == pytest.approx(reference[term], rel=rtol), (name, term)
        worst[name] = max(abs(terms[t] - reference[t]) / abs(reference[t]) for t in reference)
    return worst


@needs_cuda
@pytest.mark.parametrize("task", ["ner", "qa"])
def test_cuda_task_losses_match_the_cpu(tokenizer, task):
    build = {"ner": _token_objective_and_batch, "qa": _qa_objective_and_batch}[task]
    worst = check_task_losses_across_placements(build, tokenizer, placement("auto"))
    print(f"[cuda {task} losses] worst relative difference from the CPU: {worst}")


# --- export from a model trained on the GPU -------------------------------------------------------------------

def check_export_of_a_trained_model(tmp_path, teacher_dir, task_folder, tokenizer, precision: str) -> dict:
    """3 steps of fine-tuning on the trainer's device in ``precision``, then the export pass on the saved
    folder: the fp32 and fused ONNX graphs pass their check against PyTorch."""
    from distill.passes.export import export_model
    from distill.stages.common import batches_and_labels
    from tests.test_trainer import _run, _setup

    model, loader = _setup(teacher_dir, task_folder, tokenizer)
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, save_every=0, log_every=1, mixed_precision=precision)
    _run(FineTuneObjective(model), loader, tmp_path / "trained", tokenizer, cfg)
    folder = tmp_path / "trained" / "model"
    assert all(t.dtype == torch.float32 for t in load_file(folder / "model.safetensors").values()
               if t.is_floating_point())
    dev = tokenize(load_local(task_folder).dev, tokenizer, 32)
    batches, labels = batches_and_labels(make_loader(dev, tokenizer, 4, shuffle=False))
    results = export_model(folder, tmp_path / "export", "student-task", ["fp32", "fp32-fused"], batches, labels,
                           "accuracy", batches[:2], 32, tensorrt=False, max_metric_drop=0.05)
    for variant in ("fp32", "fp32-fused"):
        assert not results[variant].get("refused"), results[variant]
        assert results[variant]["check"]["ok"], results[variant]["check"]
    return {v: results[v]["check"]["max_abs_diff"] for v in ("fp32", "fp32-fused")}


@needs_cuda
def test_cuda_export_of_a_model_trained_on_the_gpu_passes_its_check(tmp_path, tiny_teacher_dir, task_folder,
                                                                     tokenizer):
    diffs = check_export_of_a_trained_model(tmp_path, tiny_teacher_dir, task_folder, tokenizer, "auto")
    print(f"[cuda export] max logit differences ONNX vs PyTorch: {diffs}")


# --- two processes over NCCL ----------------------------------------------------------------------------------

@needs_two_gpus
def test_cuda_two_processes_over_nccl_train_and_share_one_logit_cache(tmp_path):
    """tests/mp_train_script.py as tests/test_multiprocess.py launches it, on 2 GPUs (NCCL) instead of 2 CPU
    processes (gloo)."""
    from distill.base.ranks import PROCESS_GROUP_TIMEOUT
    from tests.test_multiprocess import ROOT, _launch_cmd, subprocess_env

    env = subprocess_env(cpu=False)
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0,1")
    done = subprocess.run(_launch_cmd(str(ROOT / "tests" / "mp_train_script.py"), str(tmp_path)), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["processes"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [10, 10]
    assert [r["backend"] for r in ranks] == ["nccl", "nccl"]
    # ranks wait at barriers while the main one runs a teacher pass: the long timeout, not NCCL's 10 minutes
    assert [r["timeout_s"] for r in ranks] == [PROCESS_GROUP_TIMEOUT.total_seconds()] * 2
    assert not set(map(str, ranks[0]["seen"])) & set(map(str, ranks[1]["seen"]))  # the ranks split the data
    # NCCL averaged the gradients: both ranks hold the same trained, finite weights
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]
    assert all(np.isfinite(r["param_abs_sum"]) and r["param_abs_sum"] != r["initial_abs_sum"] for r in ranks)
    assert [r["distill_steps"] for r in ranks] == [2, 2]
    assert [r["computed_logits"] for r in ranks] == [[40], []] and ranks[0]["logits"] == ranks[1]["logits"]
    assert os.path.isfile(tmp_path / "run" / "stage" / "DONE")
