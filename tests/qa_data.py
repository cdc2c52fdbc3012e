"""Small SQuAD-format data for the QA tests: templated paragraphs whose answers are known words."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PLACES = [("france", "paris"), ("germany", "berlin"), ("italy", "rome"), ("spain", "madrid"), ("japan", "tokyo"),
          ("egypt", "cairo"), ("peru", "lima"), ("kenya", "nairobi"), ("chile", "santiago"), ("norway", "oslo")]
FILLER = "the weather there was mild and the markets were busy on most days of the year"


def article(title: str, seed: int, paragraphs: int = 2, filler: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(paragraphs):
        country, city = PLACES[int(rng.integers(len(PLACES)))]
        year = 1900 + int(rng.integers(100))
        context = (f"{' '.join([FILLER] * filler)}. The capital of {country} is {city}, a city founded long ago. "
                   f"In {year} the people of {city} built a new bridge. {FILLER}.")
        qas = [{"id": f"{title}-{p}-city", "question": f"What is the capital of {country}?",
                "answers": [{"text": city, "answer_start": context.index(f"is {city}") + 3}]},
               {"id": f"{title}-{p}-year", "question": f"When did the people of {city} build a new bridge?",
                "answers": [{"text": str(year), "answer_start": context.index(str(year))},
                            {"text": f"In {year}", "answer_start": context.index(f"In {year}")}]}]
        out.append({"context": context, "qas": qas})
    return {"title": title, "paragraphs": out}


def squad_json(path: Path, titles: list[str], seed: int = 0, **kw) -> Path:
    data = {"version": "1.1", "data": [article(t, seed + i, **kw) for i, t in enumerate(titles)]}
    Path(path).write_text(json.dumps(data))
    return Path(path)


def squad_folder(root: Path, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    squad_json(root / "train.json", [f"train{i}" for i in range(8)], seed=0, **kw)
    squad_json(root / "dev.json", ["dev0", "dev1"], seed=100, **kw)
    squad_json(root / "test.json", ["test0", "test1"], seed=200, **kw)
    return root
