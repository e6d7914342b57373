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
