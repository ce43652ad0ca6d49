"""The app's OpenAPI 3.1 document, served at GET /openapi.json: POST /, its modelInputs, answer and error body
taken from the models in schema.py, with this deployment's limits filled in; and GET /progress. (The gateway's own
document is FastAPI's.)

Which fields go together is said in JSON Schema too (allOf below), so that data valid by the document is accepted.
What it cannot say: an image string of the forms it states must decode as an image (the "image" format), a
prompt's brackets must pair where weights are read (the "prompt" format: SD 1.x/2.x and SDXL), and width x height
within the pixel budget (implied by the per-side maximum where MAX_SIDE squared fits MAX_PIXELS; else a 422 names
it).
"""

from pydantic import BaseModel

from . import images, schedulers
from .progress import Progress
from .schema import HUB_ID, Answer, ErrorBody, FieldError, GenerateInputs, Limits, LoraChoice, aliases, default_values

IMAGES = ("image", "mask_image", "control_image")
CONTROLNET_FIELDS = ("control_image", "controlnet_conditioning_scale")
NEGATIVE = ("negative_prompt", "negative")  # FLUX.1 takes none


def _schema(model: type[BaseModel]) -> dict:
    """A model's JSON Schema, its nested models referred to in the document's components (listed there once)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def app_document(limits: Limits) -> dict:
    inputs = _schema(GenerateInputs)
    fields = inputs["properties"]
    for side in ("width", "height"):
        fields[side]["anyOf"][0].update(minimum=64, maximum=limits.max_side, multipleOf=limits.size_multiple)
    for name, default in default_values(limits).items():
        fields[name]["default"] = default
    fields["num_inference_steps"]["maximum"] = limits.max_steps
    if not limits.guidance:
        fields["guidance_scale"]["maximum"] = 1
    fields["scheduler"]["anyOf"][0]["enum"] = schedulers.names(limits.flow_matching)
    fields["num_images"]["maximum"] = limits.max_images
    fields["clip_skip"]["anyOf"][0]["maximum"] = limits.clip_layers
    fields["prompt"]["maxLength"] = limits.max_prompt_chars
    fields["negative_prompt"]["anyOf"][0]["maxLength"] = limits.max_prompt_chars
    for alias, name in aliases().items():
        fields[alias] = {**fields[name], "title": f"The same as {name} (send one of the two)"}
    for name in IMAGES:
        fields[name]["anyOf"][0] |= _image_string(limits)
    if limits.model_family.clip_prompts:  # weights are read (prompts.py): brackets must pair
        fields["prompt"]["format"] = "prompt"
        fields["negative_prompt"]["anyOf"][0]["format"] = "prompt"
        # An empty negative prompt is none (the app reads no weights in it): the document says so.
        fields["negative_prompt"]["anyOf"].insert(1, {"type": "string", "maxLength": 0})
    # Where no bucket is configured only base64 is offered; where one is, URLs are the default.
    fields["output"]["anyOf"][0]["enum"] = ["base64", "url"] if limits.bucket else ["base64"]
    fields["output"]["default"] = "url" if limits.bucket else "base64"
    fields["loras"] |= {"items": _lora_schema(limits), "maxItems": limits.max_loras if _loras_offered(limits) else 0}
    inputs["allOf"] = _fields_that_go_together(limits.controlnet)
    refused = [*(() if limits.controlnet else CONTROLNET_FIELDS), *(() if limits.negative_prompt else NEGATIVE),
               *(() if limits.model_family.clip_prompts else ("clip_skip",))]
    for name in refused:  # this deployment refuses them: its document does not offer them
        del fields[name]
    if limits.inpainting_only:
        inputs["required"] = [*inputs["required"], "image", "mask_image"]
        for name in ("image", "mask_image"):
            fields[name] = {**fields[name]["anyOf"][0], "description": fields[name].get("description", "")}
    responses = {
        "200": _json("the images, base64 data URIs or URLs in the bucket", _schema(Answer)),
        "413": _json("the body is larger than MAX_BODY_BYTES", _schema(ErrorBody)),
        "422": _json("a field is wrong: `errors` names each one", _schema(ErrorBody)),
        "500": _json("an internal failure (out of GPU memory, a bug); the details are in the app's log",
                     _schema(ErrorBody)),
    }
    if limits.bucket:
        responses["502"] = _json("the bucket refused the images or could not be reached; none is kept",
                                 _schema(ErrorBody))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stable Diffusion app (Potassium)", "version": "1"},
        "paths": {
            "/": {"post": {
                "summary": "Generate images from modelInputs",
                "requestBody": {"required": True, "content": {"application/json": {"schema": inputs}}},
                "responses": responses,
            }},
            "/progress": {"get": {
                "summary": "The running request's progress: steps, seconds left, a preview (PREVIEW_EVERY)",
                "responses": {"200": _json('{"running": false} between requests', _progress_schema())},
            }},
        },
        "components": {"schemas": {"FieldError": _schema(FieldError), "LoraChoice": _schema(LoraChoice)}},
    }


def _image_string(limits: Limits) -> dict:
    """An input image: what a generic validator can check (the forms, their lengths, the media types), and the
    "image" format for the tools that can draw images (testkit/schemathesis_hooks.py). That the string decodes as an
    image no JSON Schema can say: a 422 names the field."""
    longest = images.max_base64_chars(limits.max_image_bytes)
    encoded = {"minLength": images.MIN_BASE64_CHARS, "contentEncoding": "base64"}
    forms = [{"pattern": images.DATA_URI_PATTERN, "maxLength": longest + len("data:image/jpeg;base64,"),
              **encoded, "title": f"a data URI: {', '.join(images.MIME_TYPES.values())}"},
             {"pattern": images.BASE64_PATTERN, "maxLength": longest, **encoded,
              "title": "plain base64 of a PNG, JPEG or WebP file"}]
    if limits.image_allowed.entries:
        forms.append({"pattern": limits.image_allowed.pattern(),
                      "title": "a URL on a host IMAGE_HOSTS allows, fetched by the app"})
    return {"format": "image", "anyOf": forms}


def _progress_schema() -> dict:
    progress = _schema(Progress)
    progress["properties"] |= {"running": {"type": "boolean"},
                               "request_id": {"type": "string", "description": "its X-Banana-Request-Id (callID)"}}
    progress["required"] = ["running"]  # the rest only while one runs
    return progress


def _loras_offered(limits: Limits) -> bool:
    return bool(limits.loras or limits.lora_allowed)


def _lora_schema(limits: Limits) -> dict:
    """LoraChoice, inline (the gateway hands modelInputs' schema on to the playground alone), naming what this
    deployment has: the baked names; hub ids and URLs only where it fetches, from the hosts it allows."""
    lora = _schema(LoraChoice)
    name, url = lora["properties"]["name"], lora["properties"]["url"]
    baked = {"type": "string", "enum": list(limits.loras)}
    if limits.lora_allowed:
        name["anyOf"] = [baked, {"type": "string", "pattern": HUB_ID.pattern}]
        url["anyOf"][0]["pattern"] = limits.lora_allowed.pattern()
        lora["oneOf"] = [_given("name"), _given("url")]
    else:
        name["anyOf"] = [baked]
        del lora["properties"]["url"]
        lora["required"] = ["name"]
    return lora


def _given(*names: str) -> dict:
    """Each of these fields is sent, and not null."""
    return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}


def _fields_that_go_together(controlnet: bool) -> list[dict]:
    """schema.GenerateInputs' mode rules, in JSON Schema."""
    rules = [*({"not": {"required": [alias, name]}} for alias, name in aliases().items()),
             {"if": _given("mask_image"), "then": _given("image")},
             {"dependentSchemas": {"strength": _given("image")}}]
    if controlnet:
        rules += [{"dependentSchemas": {"controlnet_conditioning_scale": _given("control_image")}},
                  {"not": _given("image", "control_image")}]
    return rules


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
