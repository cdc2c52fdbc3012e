import json

import pytest

from distill.data.squad import (LoadStats, QADataError, load_local_squad, read_squad_json, split_by_article)


def _squad(articles: int, questions_per_paragraph: int = 2, bad: int = 0, v2: bool = False) -> dict:
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(2):
            context = f"Article {a} paragraph {p} says that the capital of land {a}{p} is City{a}{p} since 1900."
            qas = []
            for q in range(questions_per_paragraph):
                answer = f"City{a}{p}"
                start = context.index(answer)
                if bad and a == 0 and p == 0 and q == 0:
                    start += 1  # off by one: does not point at the text
                qa = {"id": f"{a}-{p}-{q}", "question": f"  What is the capital of land {a}{p}?",
                      "answers": [{"text": answer, "answer_start": start}]}
                if v2 and a == 1:
                    qa = {**qa, "answers": [], "is_impossible": True, "plausible_answers": []}
                qas.append(qa)
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Title {a}", "paragraphs": paragraphs})
    return {"version": "1.1", "canary": "x", "data": data}


def test_answers_that_do_not_match_their_text_are_counted_and_skipped(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_squad(3, questions_per_paragraph=1, bad=1)))
    stats = LoadStats()
    records = read_squad_json(path, stats)
    assert stats.questions == 6 and stats.bad_answers == 1 and stats.dropped_questions == 1
    assert len(records) == 5 and "0-0-0" not in {r["id"] for r in records}
    for r in records:
        start, text = r["answers"]["answer_start"][0], r["answers"]["text"][0]
        assert r["context"][start:start + len(text)] == text


def test_squad2_files_are_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(_squad(2, v2=True)))
    with pytest.raises(QADataError, match="SQuAD 2.0"):
        read_squad_json(path)
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(QADataError, match="not a SQuAD JSON"):
        read_squad_json(tmp_path / "bad.json")


def test_split_is_by_article_deterministic_and_complete(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_squad(20)))
    records = read_squad_json(path)
    train, dev, test = split_by_article(records)
    titles = [{r["title"] for r in s} for s in (train, dev, test)]
    assert not (titles[0] & titles[1]) and not (titles[0] & titles[2]) and not (titles[1] & titles[2])
    assert [len(t) for t in titles] == [16, 2, 2]
    assert len(train) + len(dev) + len(test) == len(records)
    again = split_by_article(list(reversed(records)))
    assert [{r["id"] for r in s} for s in again] == [{r["id"] for r in s} for s in (train, dev, test)]


def test_local_folder_with_train_and_dev_only_uses_dev_as_test(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(_squad(20)))
    dev = _squad(3)
    for art in dev["data"]:
        art["title"] = "held " + art["title"]
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    train, dev_split, test = load_local_squad(tmp_path)
    assert {t.split()[0] for t in test["title"]} == {"held"}
    assert not set(dev_split["title"]) & set(train["title"])
    assert test.column_names == ["id", "title", "context", "question", "answers"]


def test_an_index_that_no_longer_serves_the_sdist_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    # December 2026: PyPI lists only bigbench 0.0.1; the fetch must say so, not "could not fetch (... )"
    import io

    from distill.data import squad

    listing = {"files": [{"filename": "bigbench-0.0.1.tar.gz", "url": "https://example.invalid/b.tar.gz"}]}
    opened = []

    def urlopen(request, timeout=None):
        opened.append(getattr(request, "full_url", request))
        return io.BytesIO(json.dumps(listing).encode())

    monkeypatch.setattr(squad.urllib.request, "urlopen", urlopen)
    with pytest.raises(QADataError) as err:
        squad.fetch_embedded_squad(tmp_path / "squad")
    message = str(err.value)
    assert "no longer serves bigbench-1.0.0.tar.gz" in message and "bigbench-0.0.1.tar.gz" in message
    assert "squaddev_v1.1.json" in message and "\n" not in message
    assert len(opened) == 1  # the listing only: nothing downloaded
    assert not (tmp_path / "squad").exists()  # no empty folder left behind
