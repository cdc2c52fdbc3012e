"""The student and its trained projections are swapped in together: a kill while a new pair is written
leaves the old pair, never a new student with old projections."""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification

from distill.engine import objectives
from distill.stages.common import distill_saver, projections_file


class _Ctx:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


class _Trainable(nn.Module):
    def __init__(self, student, value):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict({"hidden": nn.Linear(2, 2)})
        nn.init.constant_(self.projections["hidden"].weight, value)


def test_a_kill_while_saving_keeps_the_old_student_and_projections_together(tmp_path, tiny_teacher_dir, tokenizer,
                                                                           monkeypatch):
    student = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    save = distill_saver(_Ctx(tokenizer))
    folder = tmp_path / "student-task" / "model"
    save(_Trainable(student, 1.0), folder)
    assert projections_file(tmp_path / "student-task") == folder / "projections.safetensors"
    old_weights = (folder / "model.safetensors").read_bytes()
    assert load_file(str(folder / "projections.safetensors"))["hidden.weight"].eq(1.0).all()

    with torch.no_grad():
        student.classifier.weight.add_(1.0)  # a new student ...

    def killed(*args, **kwargs):  # ... whose projections are never written: killed after the student's weights
        raise KeyboardInterrupt

    monkeypatch.setattr(objectives, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        save(_Trainable(student, 2.0), folder)
    monkeypatch.undo()
    assert (folder / "model.safetensors").read_bytes() == old_weights  # the old pair, whole
    assert load_file(str(folder / "projections.safetensors"))["hidden.weight"].eq(1.0).all()
    save(_Trainable(student, 2.0), folder)  # the next save goes through with the new pair
    assert (folder / "model.safetensors").read_bytes() != old_weights
    assert load_file(str(folder / "projections.safetensors"))["hidden.weight"].eq(2.0).all()
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)  # plain HF folder still
    assert torch.equal(reloaded.classifier.weight, student.classifier.weight)
