import pytest

from distill.report.readme import ReadmeError, artifacts_section, main, replace_results

REPORT = """# Distillation report

Run: `runs/x/default`

## Artifacts (measured side by side in one process)

| artifact | runtime | test score |
|---|---|---|
| teacher | pytorch-fp32 | 0.8221 |
| student-task | onnxruntime-int8-dynamic | 0.8002 |

Latency: CPU, 2 threads.

![pareto](pareto.png)

## Resolved config
"""

README = "# Title\n\nintro\n\n<!-- results:begin old -->\n| stale | row |\n<!-- results:end -->\n\n## Next\n"


def test_readme_gets_the_report_table_verbatim_and_keeps_the_rest(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.md").write_text(REPORT)
    (tmp_path / "README.md").write_text(README)
    assert main([str(tmp_path / "run"), "--readme", str(tmp_path / "README.md")]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "| stale | row |" not in text
    assert "| student-task | onnxruntime-int8-dynamic | 0.8002 |" in text
    assert "Latency: CPU, 2 threads." in text and "pareto" not in text and "Resolved config" not in text
    assert text.startswith("# Title\n\nintro\n") and text.rstrip().endswith("## Next")
    # running it again is stable
    assert main([str(tmp_path / "run"), "--readme", str(tmp_path / "README.md")]) == 0
    assert (tmp_path / "README.md").read_text() == text


def test_missing_markers_or_sections_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ReadmeError, match="results:begin"):
        replace_results("# no markers\n", "r", ["| a |"])
    with pytest.raises(ReadmeError, match="Artifacts"):
        artifacts_section("# Distillation report\n")
    assert main([str(tmp_path / "nope")]) == 2
    assert "make distill" in capsys.readouterr().err


def test_the_repository_readme_has_the_markers():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    assert replace_results(text, "r", ["| x |"]).count("| x |") == 1
