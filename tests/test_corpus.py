"""The built-in corpus (data/corpus.py): the stdlib's docstrings and its code, split by file."""

from stitchllm.data.corpus import SPLITS, python_code_text, python_docs_text


def test_code_text_holds_the_files_whose_docstrings_make_its_split():
    code = {split: python_code_text(split) for split in SPLITS}
    assert len(code["train"]) > 5 * len(code["heldout"]) > 0  # ~80/10/10 by file
    for split in ("heldout", "validation"):
        firsts = [chunk.splitlines()[0] for chunk in python_docs_text(split).split("\n\n")]
        firsts = [line for line in firsts if len(line) >= 60]  # long lines: unlikely to recur by chance
        assert len(firsts) > 300
        found = [line for line in firsts if line in code[split]]
        assert len(found) > 0.95 * len(firsts)  # the rest hold escapes that ast decoded (source "\\n" -> "\n")
        elsewhere = [line for line in firsts if any(line in code[s] for s in SPLITS if s != split)]
        # the files are in one split only; a few docstrings are copied between files (measured: 6 of 539
        # held-out lines, 28 of 612 validation lines)
        assert len(elsewhere) < 0.1 * len(firsts), elsewhere


def test_text_command_exports_either_kind_and_refuses_others(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "code.txt"
    run = [sys.executable, "-m", "stitchllm.cli", "text", "heldout"]
    assert subprocess.run(run + ["--kind", "code", "--out", str(out)]).returncode == 0
    assert out.read_text(encoding="utf-8") == python_code_text("heldout")
    bad = subprocess.run(run + ["--kind", "prose"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: --kind must be docs or code, got 'prose'\n"
