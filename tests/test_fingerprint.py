"""Stage fingerprints cover the contents of the local inputs a stage reads: every file of a task folder."""
import os
from types import SimpleNamespace

from datasets import Dataset, DatasetDict

from distill.fingerprint import input_digests

CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n"


def _digest(folder) -> str:
    cfg = SimpleNamespace(task=SimpleNamespace(name=str(folder), data_dir=""))
    return input_digests(cfg, "task.name", "task.data_dir")["task.name"]


def test_editing_a_conll_file_of_a_task_folder_changes_the_digest_and_a_hidden_file_does_not(tmp_path):
    folder = tmp_path / "ner"
    folder.mkdir()
    (folder / "train.conll").write_text(CONLL)
    (folder / "dev.iob").write_text(CONLL)
    (folder / "test.txt").write_text(CONLL)
    before = _digest(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert before != _digest(empty)  # CoNLL files count (they were hashed as no file at all)
    (folder / "train.conll").write_text(CONLL.replace("B-PER", "B-ORG") + "\n")
    edited = _digest(folder)
    assert edited != before
    (folder / ".DS_Store").write_text("finder state")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "index").write_text("a tool's cache")
    assert _digest(folder) == edited
    (folder / "dev.iob").write_text(CONLL + "Paris B-LOC\n")
    assert _digest(folder) != edited


def test_a_saved_dataset_dict_folder_is_hashed_through_its_subfolders(tmp_path):
    def save(texts):
        split = Dataset.from_dict({"text": texts, "label": [0] * len(texts)})
        DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "saved"))

    save(["a good film", "a dull film"])
    before = _digest(tmp_path / "saved")
    assert any(p.is_dir() for p in (tmp_path / "saved").iterdir())  # the arrow files sit in split subfolders
    save(["a good film", "a dull film", "a third one"])
    assert _digest(tmp_path / "saved") != before


def test_a_local_hub_copy_and_a_single_file_are_hashed(tmp_path):
    folder = tmp_path / "hub_squad"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"id": "a"}\n')
    before = _digest(f"hub:{folder}")
    (folder / "train.jsonl").write_text('{"id": "b"}\n\n')
    assert _digest(f"hub:{folder}") != before
    table = tmp_path / "task.csv"
    table.write_text("text,label\nfine,1\n")
    first = _digest(table)
    table.write_text("text,label\nfine,0\nbad,1\n")
    os.utime(table, ns=(1, 1))  # another mtime too: the per-process digest memo is keyed by (path, size, mtime)
    assert _digest(table) != first


def test_run_outputs_inside_a_task_folder_are_not_part_of_its_digest(tmp_path):
    folder = tmp_path / "ner"
    folder.mkdir()
    (folder / "train.conll").write_text(CONLL)
    cfg = SimpleNamespace(task=SimpleNamespace(name=str(folder), data_dir=""), output_dir=str(folder / "runs"))
    before = input_digests(cfg, "task.name")
    (folder / "runs" / "default" / "teacher").mkdir(parents=True)
    (folder / "runs" / "default" / "teacher" / "result.json").write_text("{}")
    assert input_digests(cfg, "task.name") == before  # a stage's own outputs never make it stale
    (folder / "notes").mkdir()
    (folder / "notes" / "extra.iob").write_text(CONLL)
    assert input_digests(cfg, "task.name") != before
