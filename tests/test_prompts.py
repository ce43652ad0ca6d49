"""Prompts as people write them (SD 1.x/2.x and SDXL): A1111's and compel's weights, prompts past 77 tokens used
whole, CLIP skip; and ordinary prompts left to diffusers as before. What a prompt does is read where it reaches the
model: the text embeddings the UNet is given (testkit.spies), each token's."""

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image
from hypothesis import given
from hypothesis import strategies as st

from serverless_sd.pipelines import StableDiffusion
from serverless_sd.prompts import PromptSyntaxError, to_compel, weighted
from serverless_sd.schema import parse
from testkit import precision
from testkit.schemathesis_hooks import _WEIGHTED
from testkit.spies import Calls, per_token, relative

FAST = {"num_inference_steps": 3, "seed": 4}
# The tiny models' tokenizer reads a character per token: this is about 240 tokens, four CLIP chunks.
LONG = "a lighthouse on a cliff at dusk, " * 9


@pytest.mark.parametrize("a1111, compel", [
    ("a (cat:1.3) on a mat", "a (cat)1.3 on a mat"),
    ("a ((cat))", "a ((cat)1.1)1.1"),
    ("a [cat]", "a (cat)0.9091"),
    ("(a: b:0.5)", "(a: b)0.5"),
    ("a (cat)1.3 and a dog++", "a (cat)1.3 and a dog++"),  # compel's own syntax is kept
    ("a \\(cat\\)", "a \\(cat\\)"),  # escaped: the characters themselves
    ("well-known art", "well-known art"),
    ("a ( :1.5) b", "a   b"),  # a weight on nothing is nothing (compel failed on the empty fragment)
])
def test_a1111_weights_become_compels(a1111, compel):
    assert to_compel(a1111) == compel


@pytest.mark.parametrize("prompt, message", [
    ("a ((cat", "'(' at character 4 is not closed"),
    ("a cat)", "')' at character 6 closes nothing"),
    ("a [cat)", "')' at character 7 closes nothing"),
])
def test_brackets_that_do_not_pair_say_where(prompt, message):
    with pytest.raises(PromptSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_compel(prompt)


@given(st.lists(_WEIGHTED, min_size=1, max_size=3).map(" ".join))
def test_any_text_whose_brackets_pair_is_read(prompt):
    """What the app's document calls a "prompt" (tabs, form feeds and control characters included: compel's own
    grammar stopped at them)."""
    weighted(prompt)


@pytest.fixture(scope="module")
def sd(models) -> StableDiffusion:
    return StableDiffusion.load(precision.settings(model_id=str(models["sd"]), dtype="float32"))


@pytest.fixture(scope="module")
def plain(models):
    """The same folder in plain diffusers."""
    pipe = AutoPipelineForText2Image.from_pretrained(models["sd"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(model: StableDiffusion, **inputs) -> np.ndarray:
    generated = model.generate(parse({**FAST, **inputs}, model.limits))
    return np.asarray(generated.images[0], dtype=np.float32)


def given_to_the_unet(model: StableDiffusion, **inputs) -> dict:
    """The first step's text conditioning, the prompt's half of the batch (guidance puts the negative first):
    "tokens", the text encoders' embeddings, and for SDXL "pooled", its second encoder's pooled one."""
    with Calls(model.pipe.unet) as unet:
        model.generate(parse({**FAST, **inputs}, model.limits))
    text, added = unet.first("encoder_hidden_states"), unet.first("added_cond_kwargs") or {}
    positive = slice(1, None) if text.shape[0] == 2 else slice(None)
    return {"tokens": text[positive], "pooled": added.get("text_embeds", torch.empty(0))[positive]}


def most_changed_token(a: dict, b: dict) -> float:
    """The largest change of one token's embedding, as a fraction of its size (bf16 rounding: about 0.002)."""
    return float(per_token(a["tokens"], b["tokens"]).max())


@pytest.mark.parametrize("prompt", ["(\x87:1.2)", "( )", "[ ]", "(( ))", "a ( :1.5) b"])
def test_weights_on_nothing_encode(sd, prompt):
    """Found by schemathesis: a weighted group of nothing CLIP reads ("(\x87:0.00)") was a 500 from compel."""
    assert image(sd, prompt=prompt).shape == (64, 64, 3)


def test_ordinary_prompts_go_to_diffusers_as_text(sd):
    assert not sd.encoder.needed("a red cube", "blur", None) and not sd.encoder.needed("a \\(red\\) cube", None, 1)
    assert sd.encoder.needed("a (red:1.2) cube", None, None) and sd.encoder.needed("a cube", "blur++", None)
    assert sd.encoder.needed(LONG, None, None) and sd.encoder.needed("a cube", None, 2)
    assert sd.encoder("a \\(red\\) cube", None, None) == {"prompt": "a (red) cube"}  # escaped: the characters


def test_a_long_prompt_is_used_whole(sd, plain):
    """Two prompts alike in their first 77 tokens: diffusers alone cuts both there (one image); here they differ."""
    head = "a lighthouse on a cliff at dusk, " * 3  # about 80 tokens
    first, second = (given_to_the_unet(sd, prompt=head + tail * 5, guidance_scale=15)
                     for tail in ("red roses in a vase ", "green hills under snow "))
    # Every 77-token chunk reaches the UNet: the first, the same text, gives the same embeddings; the rest differ.
    assert first["tokens"].shape[1] > 77 and second["tokens"].shape[1] > 77
    shared = min(first["tokens"].shape[1], second["tokens"].shape[1])
    change = per_token(first["tokens"][:, :shared], second["tokens"][:, :shared])
    assert change[:, :77].max() == 0 and change[:, 77:].max() > 0.5
    cut = [np.asarray(plain(prompt=head + tail * 5, guidance_scale=15, num_inference_steps=3,
                            generator=torch.Generator().manual_seed(4)).images[0], dtype=np.float32)
           for tail in ("red roses in a vase ", "green hills under snow ")]
    assert np.array_equal(*cut)


def test_weights_change_what_the_unet_is_given_and_weight_one_is_the_plain_prompt(sd):
    plain = given_to_the_unet(sd, prompt="a red cube on a table")
    for heavier in ("(a red cube on a table:2)", "a red cube on a (table:0.1)", "a (red)1.6++ cube"):
        assert most_changed_token(plain, given_to_the_unet(sd, prompt=heavier)) > 0.2, heavier
    # Through compel at a weight of (almost) one: what diffusers' own encoding gives.
    assert most_changed_token(plain, given_to_the_unet(sd, prompt="a (red:1.0001) cube on a table")) < 0.01


def test_clip_skip_2_is_clips_penultimate_layer_as_diffusers_defines_it(sd, plain):
    """A1111's "Clip skip: 2" is diffusers' clip_skip=1: CLIP's penultimate hidden state, through its final layer
    norm. (diffusers 0.42's own clip_skip fails with transformers 5's CLIPTextModel, so it is computed here.)"""
    ours = image(sd, prompt="a red cube", clip_skip=2, guidance_scale=1.0)
    tokens = plain.tokenizer("a red cube", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        hidden = plain.text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
        embeds = plain.text_encoder.final_layer_norm(hidden)
        theirs = plain(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=3,
                       generator=torch.Generator().manual_seed(4)).images[0]
    assert np.abs(ours - np.asarray(theirs, dtype=np.float32)).max() <= 1
    skipped, whole = (given_to_the_unet(sd, prompt="a red cube", **skip) for skip in ({"clip_skip": 2}, {}))
    assert relative(skipped["tokens"], whole["tokens"]) > 0.2
    assert len(sd.pipe.text_encoder.encoder.layers) == 2  # all its layers are back after the request


def test_sdxl_takes_weights_long_prompts_and_clip_skip(models):
    """Both text encoders' embeddings (and the second's pooled one, SDXL's other conditioning) reach the UNet."""
    sdxl = StableDiffusion.load(precision.settings(model_id=str(models["sdxl"])))
    assert image(sdxl, prompt=LONG + "(red:1.3)").shape == (64, 64, 3)
    negative = {"negative_prompt": "blur " * 30}
    base = given_to_the_unet(sdxl, prompt=LONG + "(red:1.3)", **negative)
    assert base["tokens"].shape[1] > 77 and base["pooled"].shape[-1] == 32  # every chunk; the pooled projection
    unweighted = given_to_the_unet(sdxl, prompt=LONG + "red", **negative)
    assert most_changed_token(base, unweighted) > 0.05  # the weight on "red"
    assert most_changed_token(base, given_to_the_unet(sdxl, prompt=LONG + "(blue:1.3)", **negative)) > 0.2
    skipped = given_to_the_unet(sdxl, prompt=LONG + "(red:1.3)", clip_skip=2, **negative)
    assert relative(skipped["tokens"], base["tokens"]) > 0.2
