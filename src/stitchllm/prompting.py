"""Turn a user's prompt into token ids: raw text or the tokenizer's own chat template."""

from __future__ import annotations

from stitchllm.errors import StitchError


def encode_prompt(tokenizer, prompt: str, chat: bool, context: int) -> list[int]:
    """Token ids of the prompt; empty prompts and prompts that fill the whole context are refused."""
    if not prompt.strip():
        raise StitchError("prompt is empty")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise StitchError("this model's tokenizer has no chat template; drop --chat")
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) >= context:
        raise StitchError(f"prompt is {len(ids)} tokens, the context is {context}: no room to generate")
    return ids
