"""general.streaming: the corpus read and packed on the fly, in a fixed order, resumable."""
import pytest
import torch
from safetensors.torch import load_file

from distill.config import ConfigError, load_config
from distill.engine.objectives import DistillObjective
from distill.data.stream import SequenceStream


def _rows(n):
    return lambda: ({"input_ids": [i] * (1 + i % 7), "length": 1 + i % 7} for i in range(n))


def test_stream_order_is_fixed_length_grouped_and_wraps_around():
    stream = SequenceStream(_rows(23), total=60, batch_size=4, seed=3, window_batches=2)
    first = [row["input_ids"] for row in stream]
    assert len(first) == len(stream) == 60 and first == [row["input_ids"] for row in stream]  # same every time
    assert "length" not in next(iter(stream))
    # each pass covers the corpus once (23 rows, then 23, then 14 of the third pass)
    assert sorted(r[0] for r in first[:23]) == list(range(23)) and sorted(r[0] for r in first[23:46]) == list(range(23))
    assert first[:23] != first[23:46]  # each pass has its own order
    # within a window of 8 rows, batches of 4 hold the 4 longest or the 4 shortest rows
    for start in (0, 8):
        window = first[start:start + 8]
        batches = [sorted(len(r) for r in window[i:i + 4]) for i in (0, 4)]
        assert max(min(b) for b in batches) >= min(max(b) for b in batches)
    other = [row["input_ids"] for row in SequenceStream(_rows(23), total=60, batch_size=4, seed=4, window_batches=2)]
    assert other != first


def test_streaming_needs_max_steps():
    with pytest.raises(ConfigError, match="general.train.max_steps.*streaming"):
        load_config(None, ["general.streaming=true"])


class Crash(Exception):
    pass


def _general(tmp_path, run_id, corpus, teacher_dir, task_folder, extra=()):
    from distill.stages.context import RunContext

    overrides = [f"output_dir={tmp_path / 'runs'}", f"run_id={run_id}", f"teacher.name={teacher_dir}",
                 f"task.name={task_folder}", "student.preset=custom", "student.layers=2", "student.hidden=32",
                 "student.heads=4", "student.ffn=32", f"general.corpus={corpus}", "general.max_len=40",
                 "general.streaming=true", "general.packing=intra_doc", "general.train.max_steps=5",
                 "general.train.batch_size=4", "general.train.save_every=2", "general.train.lr=1e-3", *extra]
    return RunContext(load_config(None, overrides))


def test_killed_streaming_run_resumes_at_its_stream_position(tmp_path, tiny_teacher_dir, task_folder, monkeypatch):
    from distill.runner.plan import build

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for part in range(2):  # a folder of files, read in order; 5 steps x 4 = 20 sequences > one pass
        (corpus / f"{part}.txt").write_text("\n".join(f"document {part} {i} tells of the " + "old town " * (i % 5 + 2)
                                                      for i in range(6)))
    seen = {}
    real_call = DistillObjective.__call__

    def recording(run_id, crash_at=0):
        def call(self, batch):
            seen.setdefault(run_id, []).append(batch["input_ids"].clone())
            if len(seen[run_id]) == crash_at:
                raise Crash()
            return real_call(self, batch)
        return call

    monkeypatch.setattr(DistillObjective, "__call__", recording("whole"))
    whole = load_file(str(build(_general(tmp_path, "whole", corpus, tiny_teacher_dir, task_folder), "general")
                          / "model.safetensors"))
    monkeypatch.setattr(DistillObjective, "__call__", recording("killed", crash_at=4))
    ctx = _general(tmp_path, "killed", corpus, tiny_teacher_dir, task_folder)
    with pytest.raises(Crash):
        build(ctx, "general")
    monkeypatch.setattr(DistillObjective, "__call__", recording("resumed"))
    resumed = load_file(str(build(ctx, "general") / "model.safetensors"))
    assert len(seen["whole"]) == 5 and len(seen["resumed"]) == 3  # steps 3, 4, 5 after the step-2 checkpoint
    for a, b in zip(seen["whole"][2:], seen["resumed"]):
        assert torch.equal(a, b)  # the same batches, at the same point of the stream
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
