"""choose-student: the budget grammar and its one-line errors, the choice (largest by encoder FLOPs among the
candidates that meet the budget, latency and throughput), the thread count really used for timing (torch and
ONNX Runtime), and one real run with ONNX Runtime timing whose student.yaml the config loader reads."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig

from distill import cli
from distill.benchmarks import choose
from distill.benchmarks.choose import Budget, BudgetError, Candidate, Measured, NoCandidateMeetsBudget, Settings
from distill.config import load_config
from distill.passes.flops import layer_flops

ROOT = Path(__file__).resolve().parents[1]
EXP = str(ROOT / "experiments" / "rotten_tomatoes_minilm.yaml")  # teacher: the embedded MiniLM (head dim 32)


# ---------------------------------------------------------------------------------------------- grammar

@pytest.mark.parametrize("text, expected", [
    ("2ms@128", Budget("latency", 2.0, 1, 128)),
    (" 2.5 ms @ 64 ", Budget("latency", 2.5, 1, 64)),
    ("0.8ms@1x32", Budget("latency", 0.8, 1, 32)),
    ("4000/s@32x128", Budget("throughput", 4000.0, 32, 128)),
    ("4,000/s@32x128", Budget("throughput", 4000.0, 32, 128)),
    ("250seq/s@8x64", Budget("throughput", 250.0, 8, 64)),
])
def test_budget_grammar(text, expected):
    assert choose.parse_budget(text) == expected


@pytest.mark.parametrize("text, says", [
    ("", "give a budget"),
    ("2 ms", "not understood"),
    ("2s@128", "not understood"),
    ("fast", "not understood"),
    ("4000/s@128", "names its batch size, e.g. 4000/s@32x128"),
    ("2ms@8x128", "latency budget is at batch 1"),
    ("0ms@128", "must be > 0"),
    ("2ms@0", "outside 1..512"),
    ("2ms@1024", "outside 1..512"),
    ("100/s@0x128", "batch size must be >= 1"),
])
def test_bad_budgets_are_one_line_errors_naming_the_fix(text, says):
    with pytest.raises(BudgetError) as err:
        choose.parse_budget(text)
    message = str(err.value)
    assert says in message and "\n" not in message


def test_latency_meets_below_throughput_above():
    assert Budget("latency", 2.0, 1, 128).meets(1.9) and not Budget("latency", 2.0, 1, 128).meets(2.1)
    assert Budget("throughput", 100, 8, 128).meets(101) and not Budget("throughput", 100, 8, 128).meets(99)


def _never(*_):
    raise AssertionError("timed a candidate although the command line was refused")


@pytest.mark.parametrize("argv, says", [
    (["--budget", "2 ms"], "not understood"),
    (["--budget", "2ms@128", "--runtime", "torch", "--int8"], "--runtime onnx --int8"),
    (["--budget", "2ms@128", "--dtype", "fp16"], "is for --device cuda"),
    (["--budget", "2ms@128", "--threads", "-1"], "--threads"),
    (["--budget", "2ms@128", "--widths", "100"], "multiple of the teacher's head dim 32"),
    (["--budget", "2ms@128", "--layers", "two"], "comma-separated whole numbers"),
])
def test_bad_command_lines_stop_before_any_timing(argv, says, tmp_path):
    with pytest.raises(BudgetError, match=says.replace(".", r"\.").replace("-", r"\-")):
        choose.main(["--config", EXP, "--out", str(tmp_path), *argv], timer=_never)
    assert not (tmp_path / "student.yaml").exists()


def test_budget_checked_before_the_experiment_is_read(tmp_path):
    with pytest.raises(BudgetError):  # not the ConfigError of the missing file: the grammar comes first
        choose.main(["--config", str(tmp_path / "missing.yaml"), "--budget", "soon"], timer=_never)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_cuda_without_cuda_is_one_line_through_the_cli(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["choose-student", "--config", EXP, "--budget", "2ms@128", "--device", "cuda"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda") and "\n" not in err


def test_listed_in_the_cli_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "choose-student" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- the choice

def flops_timer(seen: list | None = None):
    """A fake clock: time proportional to the candidate's encoder FLOPs at 128 tokens (1 ms per GFLOP)."""
    def timer(cand: Candidate, teacher_config, budget: Budget, s: Settings) -> Measured:
        if seen is not None:
            seen.append((cand, s.threads))
        ms = cand.layers * layer_flops(budget.seq, cand.hidden, cand.hidden, cand.ffn) / 1e9
        return Measured(ms if budget.kind == "latency" else budget.batch * 1000.0 / ms, s.threads)
    return timer


def _run(tmp_path, budget: str, *extra: str, timer=None) -> dict:
    return choose.main(["--config", EXP, "--budget", budget, "--out", str(tmp_path), *extra],
                       timer=timer or flops_timer())


def test_only_the_smallest_meets_a_tight_latency_budget(tmp_path, capsys):
    # 2 x 128 (FFN 512) costs 0.12 GFLOPs at 128 tokens, the next (2 x 256 / 3 x 128) at least 0.17
    result = _run(tmp_path, "0.15ms@128")
    assert result["student"] == {"preset": "custom", "layers": 2, "hidden": 128, "heads": 4, "ffn": 512,
                                 "init": "random"}
    assert sum(r["meets"] for r in result["rows"]) == 1
    assert len(result["rows"]) == 20  # 4 depths x 5 widths, all multiples of MiniLM's head dim 32
    out = capsys.readouterr().out
    assert "2x128 | 4     | 512 " in out and "<- chosen" in out


def test_only_the_smallest_meets_a_throughput_budget(tmp_path):
    # throughput: at least the budget (a budget read as "at most" would pick the largest here)
    result = _run(tmp_path, "8000/s@1x128", timer=flops_timer())
    assert (result["student"]["layers"], result["student"]["hidden"]) == (2, 128)


def test_a_budget_every_candidate_meets_picks_the_largest_by_flops(tmp_path):
    result = _run(tmp_path, "1000ms@128")
    assert all(r["meets"] for r in result["rows"])
    s = result["student"]
    assert (s["layers"], s["hidden"], s["heads"], s["ffn"]) == (6, 768, 24, 3072)
    assert s["init"] == "random"  # 768 wide: the 384-wide teacher's layers cannot be copied


def test_largest_by_flops_not_by_parameters(tmp_path):
    # 2 x 384 has more parameters (its embeddings are wider) but fewer encoder FLOPs than 6 x 256; the
    # fake clock (1 ms per GFLOP) gives 0.44, 0.96, 1.31 and 2.87 ms, so a 2 ms budget leaves 6 x 384 out
    result = _run(tmp_path, "2ms@128", "--layers", "2,6", "--widths", "256,384")
    rows = {(r["layers"], r["hidden"]): r for r in result["rows"]}
    assert rows[2, 384]["params"] > rows[6, 256]["params"]
    assert rows[2, 384]["encoder_flops"] < rows[6, 256]["encoder_flops"]
    assert (result["student"]["layers"], result["student"]["hidden"]) == (6, 256)
    widths = {(r["layers"], r["hidden"]) for r in result["rows"]}
    assert widths == {(2, 256), (2, 384), (6, 256), (6, 384)}


def test_choose_ignores_the_order_of_the_rows():
    rows = [choose.Row(Candidate(n, 128, 4, 512), params=10 - n, flops=n * 100, measured=1.0, threads=1,
                       meets=n != 6) for n in (2, 3, 4, 6)]
    for _ in range(5):
        random.shuffle(rows)
        assert choose.choose(rows).candidate.layers == 4  # 6 misses the budget; 4 has the most FLOPs of the rest


def test_no_candidate_meets_says_the_smallest_figure(tmp_path):
    with pytest.raises(NoCandidateMeetsBudget) as err:
        _run(tmp_path, "0.01ms@128", "--quick")
    message = str(err.value)
    assert "\n" not in message and "smallest, 2x128" in message and "0.12 ms" in message
    assert not (tmp_path / "student.yaml").exists() and (tmp_path / "candidates.json").is_file()


def test_recipe_ffn_ratio_and_teacher_init_kept_when_the_shape_allows(tmp_path):
    # the recipe: 3 x 384, FFN 256, init=teacher; 384 wide is the teacher's width, so init=teacher stays
    result = _run(tmp_path, "1000ms@128", "--layers", "3", "--widths", "384", "--ffn-ratios", "recipe")
    assert result["student"] == {"preset": "custom", "layers": 3, "hidden": 384, "heads": 12, "ffn": 256,
                                 "init": "teacher", "init_layers": "uniform"}


# ---------------------------------------------------------------------------------------------- threads

def test_default_threads_are_benchs_and_threads_overrides_them(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({**yaml.safe_load(Path(EXP).read_text()), "bench": {"threads": 3}}))
    seen: list = []
    rows = choose.main(["--config", str(exp), "--budget", "1000ms@64", "--quick", "--out", str(tmp_path / "a")],
                       timer=flops_timer(seen=seen))["rows"]
    assert {t for _, t in seen} == {3} and {r["threads"] for r in rows} == {3}
    seen.clear()
    choose.main(["--config", str(exp), "--budget", "1000ms@64", "--quick", "--threads", "1", "--out",
                 str(tmp_path / "b")], timer=flops_timer(seen=seen))
    assert {t for _, t in seen} == {1}


TINY_TEACHER = BertConfig(vocab_size=1200, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=64)  # head dim 32
TINY = Candidate(2, 64, 2, 256)


@pytest.mark.parametrize("threads", [1, 3])
def test_onnx_runtime_session_uses_the_requested_threads(threads, tmp_path, monkeypatch):
    sessions = []
    make = choose.ort_session
    monkeypatch.setattr(choose, "ort_session", lambda *a: sessions.append(make(*a)) or sessions[-1])
    got = choose.measure(TINY, TINY_TEACHER, Budget("latency", 1.0, 1, 16),
                         Settings(runtime="onnx", threads=threads, warmup=1, repeats=2, cache_dir=tmp_path))
    (sess,) = sessions
    assert sess.get_session_options().intra_op_num_threads == threads
    assert got.threads == threads and got.value > 0


@pytest.mark.parametrize("threads", [1, 3])
def test_torch_timing_runs_under_the_requested_threads(threads, monkeypatch):
    import distill.stages.bench as bench

    during = []
    real_time = bench._time

    def spy(run, inputs, repeats, warmup, cuda=False):
        during.append(torch.get_num_threads())
        return real_time(run, inputs, repeats, warmup, cuda)

    monkeypatch.setattr(bench, "_time", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = choose.measure(TINY, TINY_TEACHER, Budget("throughput", 1.0, 4, 16),
                             Settings(runtime="torch", threads=threads, warmup=1, repeats=3))
        assert during == [threads] and got.threads == threads
        assert torch.get_num_threads() == 2  # given back afterwards
    finally:
        torch.set_num_threads(before)


def test_param_count_matches_the_model():
    config = choose.student_bert_config(TINY, TINY_TEACHER)
    model = choose._model(TINY, TINY_TEACHER)
    assert choose._param_count(config) == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- end to end

def test_real_onnx_int8_run_writes_a_student_section_the_config_loads(tmp_path, capsys):
    """Real export, INT8 quantization and ORT timing of two small candidates; a budget both meet."""
    result = choose.main(["--config", EXP, "--budget", "2000ms@32", "--layers", "2", "--widths", "128,256",
                          "--int8", "--threads", "1", "--repeats", "3", "--warmup", "1", "--out", str(tmp_path),
                          "--cache-dir", str(tmp_path / "cache")])
    assert [r["threads"] for r in result["rows"]] == [1, 1] and all(r["measured"] > 0 for r in result["rows"])
    assert (result["student"]["layers"], result["student"]["hidden"]) == (2, 256)
    cfg = load_config(tmp_path / "student.yaml")
    assert (cfg.student.preset, cfg.student.layers, cfg.student.hidden, cfg.student.heads, cfg.student.ffn) == \
        ("custom", 2, 256, 8, 1024)
    out = capsys.readouterr().out
    args = out.split('ARGS="')[1].split('"')[0].split()
    again = load_config(EXP, args)
    assert (again.student.layers, again.student.hidden, again.student.heads, again.student.ffn) == (2, 256, 8, 1024)
    assert "onnxruntime-int8-dynamic" in out
