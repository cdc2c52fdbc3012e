"""Two CPU processes (gloo) through `accelerate launch`, running tests/mp_train_script.py: one stage trained
for 2 epochs of 10 batches of 4, so 5 batches per process per epoch. The slow tests run the real CLI under
2 processes (every training stage; a kill and a resume) and compare 2 processes x 16 with 1 process x 32."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.base.ranks import PROCESS_GROUP_TIMEOUT
from distill.engine.tracking import read_metrics
from tests.conftest import TRAINING_SECTIONS, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _cpu_ranks_would_ask_for_a_missing_gpu() -> bool:
    """accelerate 1.15's barrier passes device_ids=[local rank] for CPU processes too, and torch's barrier then
    uses <the accelerator torch was built for>:<rank>: on a CUDA build with one GPU, rank 1 of two CPU (gloo)
    processes asks for cuda:1 and dies ("invalid device ordinal", seen on an H200 host). Two CPU processes
    need a torch without an accelerator, or as many devices as processes."""
    accelerator = torch.accelerator.current_accelerator()  # the build's, as torch's barrier picks it
    return accelerator is not None and torch.accelerator.device_count() < 2


# every test here launches 2 CPU processes; on 2+ GPUs tests/test_cuda.py runs the same script over NCCL
pytestmark = pytest.mark.skipif(_cpu_ranks_would_ask_for_a_missing_gpu(),
                                reason="2 CPU processes under accelerate need no accelerator or 2+ devices "
                                       "(accelerate's barrier names device <rank>)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(cpu: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment for a child Python: the project put first on PYTHONPATH, whatever was on it
    kept (a GPU host whose packages sit on PYTHONPATH, e.g. /tmp/site, lost them when it was replaced), offline
    hub, no wandb. ``cpu``: ACCELERATE_USE_CPU, so `accelerate launch` starts CPU processes over gloo even on
    a machine with GPUs; without it they take one GPU each and talk over NCCL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    else:
        env.pop("ACCELERATE_USE_CPU", None)
    return env


def _launch_cmd(*args: str) -> list[str]:
    """`accelerate launch` of 2 processes, through this interpreter (the `accelerate` script need not sit next
    to it): --multi_gpu is accelerate's torchrun launcher; ACCELERATE_USE_CPU (subprocess_env) makes them CPU
    processes talking over gloo."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def test_two_processes_train_the_configured_epochs_in_the_samplers_order_and_write_once(tmp_path):
    env = subprocess_env()
    cmd = _launch_cmd(str(ROOT / "tests" / "mp_train_script.py"), str(tmp_path))
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["processes"] for r in ranks] == [2, 2]
    # ranks wait at barriers while the main process runs a teacher pass: not torch's 30 min (gloo) default
    assert [r["timeout_s"] for r in ranks] == [PROCESS_GROUP_TIMEOUT.total_seconds()] * 2

    for r in ranks:
        assert r["steps"] == 10  # 2 epochs x 5 batches per process, not 2 x 10
        epochs = [r["expected_by_epoch"][e][r["rank"]::2] for e in range(2)]  # BatchSamplerShard: every 2nd batch
        assert epochs[0] != epochs[1]  # each epoch has its own order...
        assert r["seen"] == epochs[0] + epochs[1]  # ...and this rank trained on exactly its share of it
    assert not set(map(str, ranks[0]["seen"])) & set(map(str, ranks[1]["seen"]))  # the ranks split the data

    stage = tmp_path / "run" / "stage"
    assert sorted(p.name for p in stage.iterdir()) == ["DONE", "metrics.jsonl", "model", "result.json", "stage.json"]
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 11))  # one writer: each step once
    assert [r["step"] for r in records if "dev_score" in r] == [4, 8, 10]
    result = json.loads((stage / "result.json").read_text())
    assert result["steps"] == 10 and set(result) == {"steps", "seconds"}

    # the ranks hold the same weights (gradients were averaged), and they are finite and trained
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"] and ranks[0]["param_abs_sum"] == ranks[1]["param_abs_sum"]
    assert all(torch.isfinite(torch.tensor(r["param_abs_sum"])) and r["param_abs_sum"] != r["initial_abs_sum"]
               for r in ranks)
    weights = load_file(stage / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert all(r["loss"] == r["loss"] for r in records if "loss" in r)  # no NaN loss

    # a distillation stage whose loss leaves the student's pooler out trains under DDP (it crashed at step 2)
    assert [r["distill_steps"] for r in ranks] == [2, 2] and not any(r["pooler_trainable"] for r in ranks)
    # teacher logits: the main process computes them once, the other rank loads the very same values
    assert [r["computed_logits"] for r in ranks] == [[40], []]
    assert ranks[0]["logits"] == ranks[1]["logits"] and {row[1] for row in ranks[0]["logits"]} == {0.0}


@pytest.mark.slow
def test_two_processes_x16_reach_the_weights_of_one_process_x32(tmp_path):
    """Same data per step (unshuffled, equal lengths), dropout off: DDP's averaged gradients give one
    process's update. Measured max abs weight difference after 8 steps at lr 1e-2: 1.5e-7."""
    env = subprocess_env()
    script = str(ROOT / "tests" / "mp_equivalence_script.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one"), "32"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_launch_cmd(script, str(tmp_path / "two"), "16"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / run / "model" / "weights.pt", weights_only=True) for run in ("one", "two"))
    assert a.keys() == b.keys() and any(k.startswith("projections.") for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, f"max abs weight difference {diff}"
    losses = [json.loads((tmp_path / run / "losses.json").read_text()) for run in ("one", "two")]
    assert len(losses[0]) == 8 and losses[0][-1] < 0.6 * losses[0][0]  # it trained
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-5)


def _cli_overrides(tmp_path, teacher, task, steps: int = 3, save_every: int = 2) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(f"the film number {i} was shown in the old cinema on a rainy day." for i in range(200)))
    return tiny_overrides(tmp_path, teacher, task, f"general.corpus={corpus}", "general.max_len=32",
                          "teacher.gate=warn", "general.teacher=task", "student.init=teacher", hidden=32, steps=steps,
                          save_every=save_every, sections=TRAINING_SECTIONS)


@pytest.mark.slow
def test_cli_runs_every_training_stage_under_two_processes_and_the_main_one_writes(tmp_path, tiny_teacher_dir,
                                                                                  task_folder):
    """`accelerate launch -m distill prune`: teacher fine-tuning, general, 2a, 2b, prune + recovery."""
    env = subprocess_env(WANDB_MODE="offline")
    cmd = _launch_cmd("-m", "distill", "prune", *_cli_overrides(tmp_path, tiny_teacher_dir, task_folder))
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run = tmp_path / "runs" / "default" / "default"
    stages = ["teacher", "student-general", "student-intermediate", "student-task", "student-pruned"]
    for stage in stages:
        assert (run / stage / "DONE").is_file() and not (run / stage / "checkpoint").exists(), stage
        steps = [r["step"] for r in read_metrics(run / stage / "metrics.jsonl") if "loss" in r]
        assert steps == [1, 2, 3], (stage, steps)  # one writer: each step logged once
    # 2b ran the teacher once, on the main process; the other rank read its cache entry (recovery trains
    # hidden_mse too, so it runs the teacher every step and uses no logit cache)
    assert done.stdout.count("computed once and reused every epoch") == 1
    # one logit entry, no half-written one (the tiny task is small, so the cache also holds its augmented copies)
    cached = [p.name for p in (run / "cache").iterdir()]
    assert len([n for n in cached if n.startswith("teacher-logits-")]) == 1, cached
    assert not [n for n in cached if n.endswith(".tmp")], cached
    assert len(list((run / "wandb").glob("offline-run-*"))) == len(stages)  # one wandb run per stage, not per rank
    assert (run / "config.yaml").is_file()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts the ranks in sessions of their own, so
    killing the launcher's process group would leave them running)."""
    def children(p: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return found

    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_killed_two_process_run_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path, tiny_teacher_dir,
                                                                                 task_folder):
    env = subprocess_env()
    steps = 150

    def cmd(folder):
        return _launch_cmd("-m", "distill", "general", *_cli_overrides(folder, tiny_teacher_dir, task_folder,
                                                                      steps=steps, save_every=10),
                           "general.teacher=")  # the pretrained teacher: no fine-tuning stage first

    reference = subprocess.run(cmd(tmp_path / "a"), env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    stage = tmp_path / "b" / "runs" / "default" / "default" / "student-general"
    killed = subprocess.Popen(cmd(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (stage / "checkpoint" / "trainer_state.json").is_file() and killed.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
    finally:
        _kill_tree(killed.pid)  # the launcher and both ranks, mid-training
        killed.wait()
    saved = json.loads((stage / "checkpoint" / "trainer_state.json").read_text())
    assert 10 <= saved["step"] < steps and not saved["finished"] and saved["processes"] == 2
    assert not (stage / "DONE").exists()
    time.sleep(1)
    assert not [p for p in Path("/proc").glob("[0-9]*") if f"output_dir={tmp_path / 'b' / 'runs'}" in _cmdline(p)]  # ranks gone

    resumed = subprocess.run(cmd(tmp_path / "b"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {saved['step']}/{steps}" in resumed.stdout + resumed.stderr
    assert json.loads((stage / "result.json").read_text())["steps"] == steps
    assert [r["step"] for r in read_metrics(stage / "metrics.jsonl") if "loss" in r] == list(range(1, steps + 1))
    a = load_file(tmp_path / "a" / "runs" / "default" / "default" / "student-general" / "model" / "model.safetensors")
    b = load_file(stage / "model" / "model.safetensors")
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
