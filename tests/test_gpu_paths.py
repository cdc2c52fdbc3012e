"""The GPU code paths: bench-train --device (run on the CPU here with a tiny teacher), the bench's device
field, GPU rows and skip lines, the report's device column and markers, and gpu-check's refusal without CUDA.
Tests of CUDA-only behaviour carry "cuda" in their names (gpu-check runs them with -k cuda)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from distill.benchmarks import train as bench_train
from distill.benchmarks import train_device
from distill.benchmarks.train_common import BenchTrainError
from distill.report import report
from distill.stages import bench
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA does")


# --- bench-train --device ---------------------------------------------------------------------------------

def test_shapes_name_the_stages_or_give_batch_and_tokens():
    assert train_device.parse_shapes("general,2a,4x16") == [("general", 256, 128), ("2a", 32, 64), ("4x16", 4, 16)]
    with pytest.raises(BenchTrainError, match="BATCHxTOKENS"):
        train_device.parse_shapes("general,4by16")


def test_linear_flops_count_every_linear_of_a_bert_forward_by_the_hand_formula():
    h, f, layers, batch, seq = 48, 96, 3, 2, 8
    model = BertModel(BertConfig(vocab_size=500, hidden_size=h, num_hidden_layers=layers, num_attention_heads=4,
                                 intermediate_size=f)).eval()
    ids = torch.randint(5, 500, (batch, seq))
    counted = train_device.linear_flops({"m": model}, lambda: model(input_ids=ids))["m"]
    per_token = layers * (4 * h * h + 2 * h * f)  # q, k, v, attention out; FFN in and out
    assert counted == 2 * per_token * batch * seq + 2 * h * h * batch  # + the pooler on [CLS]


def test_bare_loss_is_the_engines_objective_on_the_same_weights():
    """The bare loop's hand-written loss and DistillObjective agree on one batch (dropout off): the two
    loops compared by bench-train do the same work."""
    from distill.engine.layer_map import build_layer_map
    from distill.engine.objectives import DistillObjective
    from students.build import build_student
    from students.presets import resolve_shape

    torch.manual_seed(0)
    teacher = train_device.random_teacher("tiny", torch.device("cpu"))
    student = build_student(resolve_shape(train_device.STUDENT_PRESET), teacher, kind="base", init="random", seed=0)
    matches = build_layer_map(train_device.DEVICE_LOSSES, "uniform", 4, teacher.config.num_hidden_layers)
    objective = DistillObjective(student, teacher, matches)
    assert set(objective.projections) == {"embedding", "hidden"}
    assert objective.projections["hidden"].in_features == 312
    objective.trainable.eval()
    (batch,) = train_device.synthetic_batches(1, 3, 12, teacher.config.vocab_size, seed=0)
    with torch.no_grad():
        engine, terms = objective(batch)
        bare = train_device.bare_loss(student, objective.projections, teacher, batch, train_device.layer_pairs(matches))
    assert train_device.layer_pairs(matches) == [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]  # uniform, 4 of 8
    assert float(bare) == pytest.approx(float(engine), rel=1e-5)
    assert float(bare) == pytest.approx(terms["embedding_mse"] + terms["hidden_mse"], rel=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA host accelerate's process-wide state (set by any "
                    "earlier test) puts the engine on the GPU; test_cuda_bench_train_runs_in_bf16_on_the_gpu covers it")
def test_device_mode_times_engine_and_bare_loop_side_by_side_on_the_cpu(capsys, tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = bench_train.main(["--device", "cpu", "--teacher-shape", "tiny", "--shapes", "2x8", "--steps", "1",
                             "--warmup", "0", "--repeats", "1", "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    by = {r["engine"]: r for r in rows}
    assert {"ours", "bare"} <= set(by) and by["bare"]["vs_bare"] == 1.0
    for r in by.values():
        assert r["samples_per_s"] > 0 and r["linear_tflops"] > 0 and r["precision"] == "fp32"
        assert r["device"].startswith("cpu") and np.isfinite(r["loss_first"])
    # the same work per step for every engine: student (+ 5 projections) x3 + teacher x1, by hand
    h, f, t_h, t_f, tokens = 312, 1200, 64, 128, 2 * 8
    student = 4 * (4 * h * h + 2 * h * f) * 2 * tokens + 2 * h * h * 2 + 5 * 2 * h * t_h * tokens
    teacher = 8 * (4 * t_h * t_h + 2 * t_h * t_f) * 2 * tokens + 2 * t_h * t_h * 2
    assert by["ours"]["flops_per_step"] == 3 * student + teacher
    assert "| 2x8 | 2 x 8 | ours |" in text and "| 2x8 | 2 x 8 | bare |" in text and "linear TFLOP/s" in text
    if "textbrewer" not in by:
        assert "textbrewer rows skipped" in text
    assert len(out.read_text().splitlines()) == len(rows)


def test_named_stage_shapes_print_their_target_beside_the_ratio():
    rows = [{"shape": "general", "batch_size": 256, "seq_len": 128, "engine": e, "samples_per_s": v, "runs": [v],
             "linear_tflops": 1.0, "vs_bare": v / 100.0, "target": 0.9 if e == "ours" else None}
            for e, v in (("ours", 93.0), ("bare", 100.0))]
    text = bench_train.device_table(rows)
    assert "| general | 256 x 128 | ours | 93.0 | 93.0 | 1.000 | 0.93x | >= 0.9x: met |" in text
    rows[0].update(vs_bare=0.85, samples_per_s=85.0)
    assert ">= 0.9x: MISSED" in bench_train.device_table(rows)


@without_cuda
def test_device_mode_asked_for_a_gpu_without_one_stops_before_building_anything():
    with pytest.raises(BenchTrainError, match="sees no CUDA device"):
        bench_train.main(["--device", "cuda"])


@needs_cuda
def test_cuda_bench_train_runs_in_bf16_on_the_gpu(capsys):
    rows = bench_train.main(["--device", "cuda", "--teacher-shape", "tiny", "--shapes", "8x32", "--steps", "2",
                             "--warmup", "1", "--repeats", "1"])
    by = {r["engine"]: r for r in rows}
    assert by["ours"]["device"].startswith("cuda: ") and by["ours"]["precision"] in ("bf16", "fp16")
    assert by["ours"]["samples_per_s"] > 0 and by["bare"]["samples_per_s"] > 0
    assert abs(by["ours"]["loss_first"] - by["bare"]["loss_first"]) < 0.2 * by["bare"]["loss_first"]


# --- the bench: device field, GPU rows --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_bench") / "teacher"
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config(vocab_size=1200, num_hidden_layers=2)).save_pretrained(folder)
    batches = [bench.synthetic(4, 12, 1200)]
    singles = [{k: v[i:i + 1] for k, v in batches[0].items()} for i in range(4)]
    return folder, batches, np.array([0, 1, 0, 1]), singles


def test_cpu_rows_record_the_cpu_and_its_threads(tiny_folder):
    folder, batches, labels, singles = tiny_folder
    row = bench.bench_one("teacher", folder, None, folder, batches, labels, singles, "accuracy", threads=1,
                          vocab_size=1200, repeats=5)
    assert row.device == "cpu (1 threads)" and row.runtime == "pytorch-fp32"


@without_cuda
def test_gpu_rows_are_skipped_with_one_line_each_on_a_machine_without_them(tiny_folder, capsys):
    import onnxruntime as ort

    folder, *_ = tiny_folder
    exported = [("student-task", Path("m.onnx"), v, folder) for v in ("fp32", "fp32-fused", "fp16", "int8-qdq")]
    rows = bench.gpu_artifacts({"teacher": folder}, exported)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[bench] PyTorch GPU rows (fp16, bf16) skipped: ") for line in lines)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert any(line.startswith("[bench] ONNX Runtime CUDA rows skipped: ") for line in lines)
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert any(line.startswith("[bench] ONNX Runtime TensorRT rows skipped: ") for line in lines)
    assert any(line.startswith("[bench] TensorRT engine rows skipped: ") for line in lines)
    assert len(lines) == 4 - ("CUDAExecutionProvider" in ort.get_available_providers()) \
        - ("TensorrtExecutionProvider" in ort.get_available_providers())
    assert all(backend not in bench.TORCH_GPU for *_, backend in rows)


@needs_cuda
@pytest.mark.parametrize("backend", ["pytorch-fp16", "pytorch-bf16"])
def test_cuda_pytorch_rows_run_on_the_gpu_and_agree_with_the_cpu(tiny_folder, backend):
    folder, batches, labels, singles = tiny_folder
    if backend == "pytorch-bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    row = bench.bench_one("teacher", folder, None, folder, batches, labels, singles, "accuracy", threads=1,
                          vocab_size=1200, repeats=5, backend=backend)
    assert row.runtime == backend and row.device == f"cuda: {torch.cuda.get_device_name()}" and row.p50_ms > 0
    cpu = bench.Runner(folder, 1)(batches[0])
    gpu = bench.Runner(folder, 1, backend=backend)(batches[0])
    assert np.abs(cpu - gpu).max() < 5e-2


@needs_cuda
def test_cuda_rows_listed_for_the_teacher_and_every_student(tiny_folder, capsys):
    folder, *_ = tiny_folder
    rows = bench.gpu_artifacts({"teacher": folder, "student-task": folder}, [])
    torch_rows = {(name, backend) for name, _, _, _, backend in rows if backend in bench.TORCH_GPU}
    assert {("teacher", "pytorch-fp16"), ("student-task", "pytorch-fp16")} <= torch_rows
    assert "PyTorch GPU rows" not in capsys.readouterr().out


# --- the report: device column, markers -------------------------------------------------------------------

def _row(name, runtime, p50, device):
    return dict(name=name, runtime=runtime, score=0.8, metric="accuracy", p50_ms=p50, p95_ms=p50, p50_ms_real=p50,
                throughput_b32=100.0, throughput_b32_real=100.0, size_mb=1.0, params=10, flops_128=10, device=device)


ROWS = [_row("teacher", "pytorch-fp32", 20.0, "cpu (16 threads)"),
        _row("teacher", "pytorch-bf16", 2.0, "cuda: NVIDIA H200"),
        _row("student-task", "pytorch-bf16", 0.5, "cuda: NVIDIA H200"),
        _row("student-task", "pytorch-fp32", 5.0, "cpu (16 threads)")]


def test_report_table_has_a_device_column_and_same_runtime_compares_on_the_same_device(tmp_path):
    table = report._table(ROWS, ROWS[0])
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[-1] == "device" and table[1].count("---") == len(head)
    cells = {(c[0], c[1]): c for c in ([x.strip() for x in line.strip("|").split("|")] for line in table[2:])}
    assert cells[("student-task", "pytorch-bf16")][-1] == "cuda: NVIDIA H200"
    assert cells[("student-task", "pytorch-fp32")][-1] == "cpu (16 threads)"
    assert cells[("student-task", "pytorch-bf16")][head.index("same runtime")] == "4.0x"  # vs the GPU teacher
    old = {k: v for k, v in ROWS[0].items() if k != "device"}  # a bench.json written before the field
    assert report._table([old], old)[2].rstrip(" |").endswith("cpu (threads not recorded)")
    md, _ = report.write_report(tmp_path, ROWS, "name: x\n", [])
    assert "| device |" in md.read_text() and "| cuda: NVIDIA H200 |" in md.read_text()


def test_pareto_plot_marks_gpu_and_cpu_points_apart(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    markers = []
    scatter = Axes.scatter
    monkeypatch.setattr(Axes, "scatter",
                        lambda self, *a, **kw: markers.append(kw.get("marker")) or scatter(self, *a, **kw))
    report.pareto_plot(ROWS, tmp_path / "pareto.png")
    assert markers == ["o", "s", "s", "o"] and (tmp_path / "pareto.png").stat().st_size > 0


# --- gpu-check ---------------------------------------------------------------------------------------------

@without_cuda
def test_gpu_check_stops_at_once_with_one_line_on_a_machine_without_a_gpu():
    done = subprocess.run([sys.executable, "-m", "distill.benchmarks.gpu_check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "sees no CUDA device" in lines[0], done.stderr


def test_gpu_check_table_reads_timings_bench_train_rows_and_gpu_bench_rows(tmp_path):
    import json

    from distill.benchmarks import gpu_check

    (tmp_path / "timings.json").write_text(json.dumps({"total": 140.2, "teacher": 17.3, "reused": ["x"]}))
    (tmp_path / "bench.json").write_text(json.dumps(ROWS))
    train_out = tmp_path / "train.jsonl"
    train_out.write_text(json.dumps({"shape": "general", "batch_size": 256, "seq_len": 128, "engine": "ours",
                                     "samples_per_s": 2500.0, "linear_tflops": 80.0, "precision": "bf16",
                                     "vs_bare": 0.95, "target": 0.9}) + "\n")
    steps = [gpu_check.Step("CUDA tests", "ok", 12.0, "5 passed"),
             gpu_check.Step("embedded default", "ok", 150.0,
                            lines=["[bench] TensorRT engine rows skipped: the tensorrt package is not importable"])]
    text = gpu_check.table(gpu_check.figures(steps, tmp_path, train_out))
    assert "| check | CUDA tests | ok, 12.0 s (5 passed) |" in text
    assert "| stage seconds | teacher | 17.3 |" in text and "reused" not in text
    assert "0.95x bare (target >= 0.9x: met)" in text
    assert "| bench GPU rows | student-task pytorch-bf16 | p50 0.50 ms" in text
    assert "student-task pytorch-fp32" not in text  # CPU rows are not GPU rows
    assert "| bench GPU rows | skipped | TensorRT engine rows skipped: the tensorrt package is not importable |" in text


def test_gpu_check_counts_a_run_with_refused_formats_as_a_pass_and_names_them():
    from distill.benchmarks import gpu_check

    refused = gpu_check.Step("embedded default", "failed (exit 3)", 200.0, "runs/x", lines=[
        "[distill] finished, but 1 format(s) refused and left out: teacher-int8-dynamic (check failed)"])
    assert gpu_check.refusals_pass(refused).ok and "teacher-int8-dynamic" in refused.note
    broken = gpu_check.Step("embedded default", "failed (exit 1)", 10.0, "runs/x")
    assert not gpu_check.refusals_pass(broken).ok


def test_gpu_check_moves_aside_and_names_a_run_folder_outside_the_checkout(tmp_path, monkeypatch):
    """output_dir may be an absolute path anywhere: the distill step still names its folder and keeps the
    previous check's run aside, where relative_to(checkout) used to raise ValueError."""
    from distill.benchmarks import gpu_check

    outside = tmp_path / "elsewhere" / "run"
    outside.mkdir(parents=True)
    monkeypatch.setattr(gpu_check, "run_dir", lambda root: outside)
    monkeypatch.setattr(gpu_check, "run_step", lambda step, cmd, limit, root: step)
    monkeypatch.setattr(gpu_check, "refusals_pass", lambda step: step)
    step = gpu_check.run_distill(Path(__file__).resolve().parents[1], 1.0)
    assert step.note == str(outside) and outside.with_name("gpu-check.old").is_dir()
