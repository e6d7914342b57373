"""The `stitchllm` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Optional

import typer

from stitchllm.errors import StitchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve a family of LLMs block by block.")

ModelOpt = Annotated[str, typer.Option("--model", help="Large model: 'default' (embedded SmolLM2), HF dir, .gguf or hub id.")]


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to complete (or the user message with --chat).")],
    max_tokens: Annotated[int, typer.Option(help="Most new tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template.")] = False,
    model: ModelOpt = "default",
) -> None:
    """Complete PROMPT with the large model (KV cache, greedy by default), streaming tokens to stdout."""
    from stitchllm.generation import generate as run_generate
    from stitchllm.generation import model_last_logits
    from stitchllm.models.loader import load_model, load_tokenizer
    from stitchllm.prompting import encode_prompt
    from stitchllm.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    lm = load_model(model)
    tokenizer = load_tokenizer(model, lm.config.vocab_size)
    ids = encode_prompt(tokenizer, prompt, chat=chat, context=lm.max_positions)
    params.max_tokens = min(params.max_tokens, lm.max_positions - len(ids))
    stream = _TokenStream(tokenizer)
    run_generate(model_last_logits(lm, 1, len(ids) + params.max_tokens), [ids], params,
                 {tokenizer.eos_token_id}, on_token=lambda _, t: stream.push(t))
    stream.finish()


class _TokenStream:
    """Prints decoded text as tokens arrive, holding back bytes of a character still incomplete."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.printed = tokenizer, [], ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(self.printed):])
            sys.stdout.flush()
            self.printed = text

    def finish(self) -> None:
        sys.stdout.write("\n")


@app.command("eval")
def eval_command(
    text: Annotated[str, typer.Option("--text", help="UTF-8 text file to score.")],
    routes: Annotated[str, typer.Option(help="Comma-separated routes to score.")] = "large",
    max_tokens: Annotated[Optional[int], typer.Option(help="Score at most this many tokens of the text.")] = None,
    window: Annotated[int, typer.Option(help="Scoring window in tokens (no BOS between windows).")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    model: ModelOpt = "default",
) -> None:
    """Perplexity of each route over a text file, in windows of at most --window tokens."""
    from stitchllm.eval.perplexity import model_full_logits, perplexity
    from stitchllm.eval.text import read_text, token_windows
    from stitchllm.models.loader import load_model, load_tokenizer

    names = [r.strip() for r in routes.split(",") if r.strip()]
    unknown = [n for n in names if n != "large"]
    if unknown:
        raise StitchError(f"unknown route(s): {', '.join(unknown)}; available: large")
    if not 2 <= window <= 8192:
        raise StitchError(f"--window must be between 2 and 8192, got {window}")
    body = read_text(text)
    lm = load_model(model)
    windows = token_windows(body, load_tokenizer(model, lm.config.vocab_size), min(window, lm.max_positions), max_tokens)
    total = perplexity(model_full_logits(lm), windows)
    rows = [{"name": "large", "cost": 1.0, "ppl": total.ppl, "tokens": total.tokens}]
    if as_json:
        print(json.dumps({"routes": rows}))
    else:
        for r in rows:
            print(f"{r['name']:>12}  cost {r['cost']:.3f}  ppl {r['ppl']:.3f}  tokens {r['tokens']}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    _quiet_libraries()
    try:
        app(standalone_mode=False)
    except StitchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
