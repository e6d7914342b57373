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


family_app = typer.Typer(no_args_is_help=True, help="Model families: derive a smaller sibling, show sizes.")
app.add_typer(family_app, name="family")
SmallOpt = Annotated[Optional[str], typer.Option("--small", help="Small model dir (default: the derived sibling).")]


@family_app.command("derive")
def family_derive(
    parent: Annotated[str, typer.Option("--from", help="Parent model (default: the embedded SmolLM2).")] = "default",
    out: Annotated[Optional[str], typer.Option("--out", help="Output directory (default: cached sibling).")] = None,
    layers: Annotated[int, typer.Option(help="Blocks to keep.")] = 16,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 384,
    heads: Annotated[int, typer.Option(help="Query heads.")] = 6,
    kv_heads: Annotated[int, typer.Option(help="Key/value heads.")] = 2,
    intermediate: Annotated[int, typer.Option(help="MLP channels.")] = 1536,
    tokens: Annotated[int, typer.Option(help="Distillation tokens for healing (0: prune only).")] = 163840,
    seed: Annotated[int, typer.Option(help="Seed (data order, init).")] = 0,
    text: Annotated[Optional[str], typer.Option(help="Your own UTF-8 text instead of the stdlib docstrings.")] = None,
) -> None:
    """Prune PARENT (depth and width, by activation importance) and heal it by distillation into an HF directory."""
    from pathlib import Path

    from stitchllm.family.derive import DeriveConfig, default_sibling_dir, derive
    from stitchllm.family.prune import PruneTarget

    cfg = DeriveConfig(parent=parent, target=PruneTarget(layers, hidden, heads, kv_heads, intermediate),
                       heal_tokens=tokens, seed=seed, text=text)
    out_dir = Path(out) if out else default_sibling_dir()
    report = derive(cfg, out_dir)
    ppl = report["val_ppl"]
    print(f"sibling at {out_dir}: validation ppl parent {ppl['parent']:.2f}, pruned {ppl['pruned']:.2f}"
          + (f", healed {ppl['healed']:.2f}" if "healed" in ppl else "") + f" ({report['seconds']:.0f} s)")


@family_app.command("show")
def family_show(
    dirs: Annotated[Optional[list[str]], typer.Argument(help="Model dirs (default: the default family).")] = None,
) -> None:
    """Print each model's layers, hidden size, heads, parameters and FLOPs per token."""
    from stitchllm.family.derive import default_sibling_dir
    from stitchllm.models.loader import load_config, resolve_model_dir

    sources = dirs or ["default"] + ([str(default_sibling_dir())] if default_sibling_dir().is_dir() else [])
    print(f"{'model':<48} {'layers':>6} {'hidden':>6} {'heads':>7} {'emb params':>11} {'non-emb':>11} {'GFLOP/tok':>9}")
    for src in sources:
        c = load_config(resolve_model_dir(src))
        print(f"{str(src)[-48:]:<48} {c.num_layers:>6} {c.hidden_size:>6} {c.num_heads:>3}/{c.num_kv_heads:<3} "
              f"{c.embedding_params / 1e6:>10.2f}M {c.non_embedding_params / 1e6:>10.2f}M {c.flops_per_token / 1e9:>9.3f}")


@app.command("eval")
def eval_command(
    text: Annotated[str, typer.Option("--text", help="UTF-8 text file to score.")],
    routes: Annotated[str, typer.Option(help="Comma-separated routes to score: large, small.")] = "large",
    max_tokens: Annotated[Optional[int], typer.Option(help="Score at most this many tokens of the text.")] = None,
    window: Annotated[int, typer.Option(help="Scoring window in tokens (no BOS between windows).")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    model: ModelOpt = "default",
    small: SmallOpt = None,
) -> None:
    """Perplexity, top-1 agreement and KL to the large model of each route, over a text file."""
    from stitchllm.eval.perplexity import model_full_logits
    from stitchllm.eval.quality import Candidate, evaluate
    from stitchllm.eval.text import read_text, token_windows
    from stitchllm.family.derive import default_sibling_dir
    from stitchllm.models.loader import load_model, load_tokenizer

    names = [r.strip() for r in routes.split(",") if r.strip()]
    unknown = [n for n in names if n not in ("large", "small")]
    if unknown or not names:
        raise StitchError(f"unknown route(s): {', '.join(unknown) or '(none)'}; available: large, small")
    if not 2 <= window <= 8192:
        raise StitchError(f"--window must be between 2 and 8192, got {window}")
    body = read_text(text)
    large = load_model(model)
    candidates = {"large": Candidate("large", 1.0, model_full_logits(large))}
    if "small" in names:
        small_dir = small or str(default_sibling_dir())
        s = load_model(small_dir)
        _check_same_vocab(large, s)
        candidates["small"] = Candidate("small", s.config.flops_per_token / large.config.flops_per_token,
                                        model_full_logits(s))
    tokenizer = load_tokenizer(model, large.config.vocab_size)
    windows = token_windows(body, tokenizer, min(window, large.max_positions), max_tokens)
    rows = evaluate([candidates[n] for n in names], candidates["large"].full_logits, windows)
    if as_json:
        print(json.dumps({"routes": rows}))
    else:
        for r in rows:
            print(f"{r['name']:>12}  cost {r['cost']:.3f}  ppl {r['ppl']:8.3f}  top1 {r['top1_agree']:.3f}  "
                  f"kl {r['kl']:.4f}  tokens {r['tokens']}")


def _check_same_vocab(large, small) -> None:
    if large.config.vocab_size != small.config.vocab_size:
        raise StitchError(f"tokenizer mismatch: large vocab {large.config.vocab_size}, small {small.config.vocab_size}")


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
