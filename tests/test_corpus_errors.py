"""Bad general corpora fail with one clear line, before any model loads or trains."""
import pytest
from datasets import Dataset, IterableDataset

from distill.data import corpus as corpus_module
from distill.data.corpus import CorpusError, iter_documents


def _ctx(tmp_path, corpus, task_folder, teacher_dir, *extra):
    from distill.config import load_config
    from distill.stages.context import RunContext

    return RunContext(load_config(None, [f"output_dir={tmp_path / 'runs'}", f"teacher.name={teacher_dir}",
                                         f"task.name={task_folder}", f"general.corpus={corpus}",
                                         "general.max_len=32", "general.train.max_steps=2", *extra]))


def _no_model_loads(monkeypatch):
    from distill.runner.plan import build
    from distill.stages import general as distillation

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the corpus was checked")
    monkeypatch.setattr(distillation, "load_backbone", refuse)


@pytest.mark.parametrize("streaming", ["false", "true"])
@pytest.mark.parametrize("content,message", [
    (b"", "holds no text"),
    (b"too short\nalso short\n", "all 2 documents are shorter than general.min_doc_tokens=8"),
    ("caf\u00e9 au lait is a fine drink for the morning hours\n".encode("latin-1"),
     r"is not UTF-8 text \(byte 0xe9 at offset 3\); convert it"),
])
def test_bad_corpus_file_fails_before_any_model_loads(tmp_path, monkeypatch, task_folder, tiny_teacher_dir,
                                                      content, message, streaming):
    from distill.runner.plan import build
    from distill.stages import general as distillation

    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    _no_model_loads(monkeypatch)
    ctx = _ctx(tmp_path, path, task_folder, tiny_teacher_dir, f"general.streaming={streaming}")
    with pytest.raises(CorpusError, match=message):
        build(ctx, "general")
    assert not (ctx.run_dir / "student-general").exists()  # nothing started


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_corpus_without_the_text_column(monkeypatch, streaming):
    rows = {"content": ["a first document with enough words in it", "and a second one"], "id": [1, 2]}

    def fake_load_dataset(name, subset, split, streaming=False):
        data = Dataset.from_dict(rows)
        return data.to_iterable_dataset() if streaming else data
    monkeypatch.setattr(corpus_module, "load_dataset", fake_load_dataset)
    with pytest.raises(CorpusError, match=r"'someone/books' has no 'text' column \(found \['content', 'id'\]\); "
                                          "set general.text_column"):
        list(iter_documents("someone/books", streaming=streaming))
    assert list(iter_documents("someone/books", text_column="content", streaming=streaming)) == rows["content"]
    assert isinstance(fake_load_dataset("x", None, "train", True), IterableDataset)


def test_utf8_is_checked_across_chunk_boundaries(tmp_path):
    from distill.data.corpus import check_utf8

    path = tmp_path / "a.txt"
    path.write_bytes("\u00e9".encode() * 10)  # two-byte characters split across every 3-byte chunk
    check_utf8(path, chunk=3)
    path.write_bytes(("h\u00e9llo\n" * 1000).encode() + b"bad \xff byte\n")
    with pytest.raises(CorpusError, match="byte 0xff at offset 7004"):
        check_utf8(path, chunk=4099)


def test_intra_doc_with_an_attention_that_ignores_the_mask_stops_before_training(tmp_path, monkeypatch, task_folder,
                                                                                  tiny_teacher_dir):
    from transformers import AttentionInterface

    from distill.runner.plan import build
    from distill.stages import general as distillation
    from distill.data.packing import BlockMaskError
    from tests.test_packing import _ignore_mask

    AttentionInterface.register("test_ignore_mask", _ignore_mask)
    real = distillation.load_backbone

    def flash_like(*args, **kwargs):
        model = real(*args, **kwargs)
        model.set_attn_implementation("test_ignore_mask")
        return model
    monkeypatch.setattr(distillation, "load_backbone", flash_like)
    monkeypatch.setattr(distillation, "train", lambda *a, **k: pytest.fail("training started"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the film number {i} was shown in the old cinema on a rainy evening." for i in range(9)))
    ctx = _ctx(tmp_path, corpus, task_folder, tiny_teacher_dir, "general.packing=intra_doc", "student.preset=custom",
               "student.layers=2", "student.hidden=32", "student.heads=4", "student.ffn=32")
    with pytest.raises(BlockMaskError, match="teacher's attention implementation 'test_ignore_mask' lets documents "
                                             "attend to each other; use eager or sdpa"):
        build(ctx, "general")


def _segmentation_task(folder, english=True):
    other = {"input": "Der Hund schläft.\nDie Katze auch.\n", "target": "0 1"}
    text = ("The cat sat on the mat.\nIt was warm.\nThe dog barked at the door.\n" if english
            else "Le chat dort.\nIl fait chaud.\nLe chien aboie.\n")
    examples = [other] * 1000 + [{"input": text, "target": "0 1 0"}] * 1000 + [other] * 10
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(__import__("json").dumps({"examples": examples}))


def test_wiki_bigbench_rebuilds_english_paragraphs_from_sentence_labels(tmp_path, monkeypatch):
    """Examples 1000-1999 are the English block; a label 1 ends a paragraph, a last unlabelled run is one too."""
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    _segmentation_task(tmp_path / "paragraph_segmentation")
    paragraphs = list(iter_documents("wiki_bigbench"))
    assert paragraphs[:2] == ["The cat sat on the mat. It was warm.", "The dog barked at the door."]
    assert len(paragraphs) == 2000
    from distill.config import load_config

    assert load_config(None, ["general.corpus=wiki_bigbench"]).general.corpus == "wiki_bigbench"


def test_wiki_bigbench_refuses_a_block_that_is_not_english(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    _segmentation_task(tmp_path / "paragraph_segmentation", english=False)
    with pytest.raises(CorpusError, match="do not look English"):
        list(iter_documents("wiki_bigbench"))


def test_preflight_checks_the_corpus_before_the_teacher_is_fine_tuned(tmp_path, task_folder, tiny_teacher_dir):
    from distill.runner.pipeline import preflight

    path = tmp_path / "corpus.txt"
    path.write_bytes(b"only \xff\xfe latin bytes here in a corpus line that is long enough\n")
    ctx = _ctx(tmp_path, path, task_folder, tiny_teacher_dir, "student.preset=custom", "student.layers=2",
               "student.hidden=32", "student.heads=4", "student.ffn=32")
    with pytest.raises(CorpusError, match="not UTF-8 text"):
        preflight(ctx.cfg, ctx)
    path.write_text("a corpus line that is long enough to make one sequence of word pieces\n")
    preflight(ctx.cfg, ctx)
