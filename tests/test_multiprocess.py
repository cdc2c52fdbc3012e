"""Two CPU processes (gloo) through `accelerate launch`, running tests/mp_train_script.py: one stage trained
for 2 epochs of 10 batches of 4, so 5 batches per process per epoch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_the_configured_epochs_in_the_samplers_order_and_write_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    accelerate = Path(sys.executable).with_name("accelerate")
    # --multi_gpu is accelerate's torchrun launcher; ACCELERATE_USE_CPU makes it CPU processes with gloo
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(ROOT / "tests" / "mp_train_script.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["processes"] for r in ranks] == [2, 2]

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
    assert json.loads((stage / "result.json").read_text()) == {"steps": 10}

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
