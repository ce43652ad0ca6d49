"""Prompts as people write them, for SD 1.x/2.x and SDXL: AUTOMATIC1111's weighting syntax and compel's, prompts
longer than CLIP's 77 tokens used whole (in 77-token chunks, as A1111 does), and CLIP skip.

AUTOMATIC1111's `(word:1.3)`, `(word)` (x1.1) and `[word]` (/1.1) are rewritten into compel's `(word)1.3` before
compel (https://github.com/damian0815/compel) reads the prompt; compel's own `word++`, `word-` and `(words)0.8` pass
as they are. A prompt that needs none of it goes to diffusers as text, as before, so its image does not change.
"""

import functools
import re
from contextlib import contextmanager

from compel import Compel

CLIP_TOKENS = 77
_WEIGHT = re.compile(r"^(.*):\s*([0-9]*\.?[0-9]+)\s*$", re.DOTALL)
_COMPEL_WEIGHT_NEXT = re.compile(r"[0-9+-]")
_CLOSING = {")": "(", "]": "["}
_SYNTAX = re.compile(r"[()\[\]+]|-(?!\w)")  # what compel might read as syntax; the rest is plain text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPED = re.compile(r"\\([()\[\]+\-\\])")


class PromptSyntaxError(ValueError):
    """A bracket that is not closed, or closed without being opened; the message says where."""


def to_compel(prompt: str) -> str:
    """AUTOMATIC1111's attention syntax rewritten as compel's; compel's own syntax and escaped brackets (`\\(`) kept."""
    # compel's grammar stops at a tab or a form feed; to CLIP's tokenizer they are spaces, as control characters are.
    prompt = _CONTROL.sub(" ", prompt)
    stack: list[tuple[str, int, list[str]]] = []  # (opening bracket, its position, the text inside so far)
    out: list[str] = []
    i = 0
    while i < len(prompt):
        char = prompt[i]
        target = stack[-1][2] if stack else out
        if char == "\\" and i + 1 < len(prompt):
            target.append(prompt[i:i + 2])
            i += 2
            continue
        if char in "([":
            stack.append((char, i, []))
        elif char in ")]":
            if not stack or stack[-1][0] != _CLOSING[char]:
                raise PromptSyntaxError(f"{char!r} at character {i + 1} closes nothing (write \\{char} for the "
                                        "character itself)")
            _, _, inside = stack.pop()
            (stack[-1][2] if stack else out).append(_group("".join(inside), char, prompt[i + 1:i + 2]))
        else:
            target.append(char)
        i += 1
    if stack:
        bracket, at, _ = stack[-1]
        closing = ")" if bracket == "(" else "]"
        raise PromptSyntaxError(f"{bracket!r} at character {at + 1} is not closed (add {closing!r}, or write "
                                f"\\{bracket} for the character itself)")
    return "".join(out)


def _group(inside: str, closing: str, after: str) -> str:
    text = _WEIGHT.sub(r"\1", inside)
    if not text.strip():
        return text  # a weight on nothing, "( :1.2)": compel fails on an empty fragment, and there is no text to weigh
    if closing == "]":
        return f"({inside})0.9091"  # A1111: divided by 1.1
    if after and _COMPEL_WEIGHT_NEXT.match(after):
        return f"({inside})"  # compel's own (words)0.8 or (words)++: its weight follows
    weighted = _WEIGHT.match(inside)
    if weighted:
        return f"({weighted.group(1)}){weighted.group(2)}"
    return f"({inside})1.1"


def unescaped(prompt: str) -> str:
    """The text as meant: `\\(` is "(" (as in AUTOMATIC1111), `\\+` is "+" (as in compel)."""
    return _ESCAPED.sub(r"\1", prompt)


@functools.lru_cache(maxsize=32)  # validation asks, then the encoder: compel reads 4,000 characters in about 1 s
def weighted(prompt: str) -> bool:
    """Whether compel reads anything but plain text of weight 1 in the prompt (a weight, a blend, a conjunction)."""
    if not _SYNTAX.search(_ESCAPED.sub("", prompt)):
        return False  # most prompts: no bracket, no +/- ending a word; nothing for compel to read
    try:
        conjunction = Compel.parse_prompt_string(to_compel(prompt))
    except PromptSyntaxError:
        raise
    except Exception as error:  # noqa: BLE001 - pyparsing's, and compel's own, for text it cannot read
        raise PromptSyntaxError(f"compel cannot read it ({type(error).__name__}: {str(error)[:120]})") from None
    [*prompts] = conjunction.prompts
    return len(prompts) != 1 or type(prompts[0]).__name__ != "FlattenedPrompt" or any(
        type(fragment).__name__ != "Fragment" or fragment.weight != 1.0 for fragment in prompts[0].children)


class Encoder:
    """compel over a loaded SD 1.x/2.x or SDXL pipeline's tokenizers and text encoders (shared, not copied)."""

    def __init__(self, pipe):
        from compel import CompelForSD, CompelForSDXL

        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.compel = CompelForSDXL(pipe) if self.sdxl else CompelForSD(pipe)
        self.tokenizer = pipe.tokenizer
        self.text_encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if self.sdxl else [])]
        self.layers = min(len(_layers_of(encoder).layers) for encoder in self.text_encoders)  # clip_skip's bound

    def needed(self, prompt: str, negative_prompt: str | None, clip_skip: int | None) -> bool:
        """Whether diffusers' own encoding would not do: weights, more than 77 tokens, or CLIP skip."""
        texts = [prompt, *([negative_prompt] if negative_prompt else [])]
        too_long = any(len(self.tokenizer(text).input_ids) > CLIP_TOKENS for text in texts)
        return bool(clip_skip and clip_skip > 1) or too_long or any(weighted(text) for text in texts)

    def __call__(self, prompt: str, negative_prompt: str | None, clip_skip: int | None) -> dict:
        """The pipeline's text arguments: the texts themselves (unescaped) where diffusers' encoding does, else
        prompt_embeds (pooled too, for SDXL), chunked past 77 tokens."""
        if not self.needed(prompt, negative_prompt, clip_skip):
            return {"prompt": unescaped(prompt), **({"negative_prompt": unescaped(negative_prompt)}
                                                    if negative_prompt else {})}
        with skipping_layers(self.text_encoders, (clip_skip or 1) - 1):
            conditioning = self.compel(to_compel(prompt), negative_prompt=to_compel(negative_prompt or ""))
        embeds = {"prompt_embeds": conditioning.embeds, "negative_prompt_embeds": conditioning.negative_embeds}
        if self.sdxl:
            embeds |= {"pooled_prompt_embeds": conditioning.pooled_embeds,
                       "negative_pooled_prompt_embeds": conditioning.negative_pooled_embeds}
        return embeds


@contextmanager
def skipping_layers(text_encoders, skip: int):
    """CLIP skip: each encoder runs without its last `skip` layers for the duration (A1111's "Clip skip" N is N - 1
    layers skipped; the same embeddings as diffusers' clip_skip=N-1 on SD 1.x/2.x)."""
    stacks = [_layers_of(encoder) for encoder in text_encoders]
    layers = [stack.layers for stack in stacks]
    for stack, full in zip(stacks, layers, strict=True):
        stack.layers = full[:len(full) - skip]
    try:
        yield
    finally:
        for stack, full in zip(stacks, layers, strict=True):
            stack.layers = full


def _layers_of(text_encoder):
    """The module holding a CLIP text encoder's `layers`: transformers 5's CLIPTextModel holds them itself,
    CLIPTextModelWithProjection in .text_model."""
    return getattr(text_encoder, "text_model", text_encoder).encoder
