"""LoRAs per request (loras.py): read by diffusers' own loader, fused into the weights in place, restored bit for bit;
baked by name, fetched at run time from allowed hosts only; every bad LoRA a 422 that names it."""

import shutil

import httpx
import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image
from safetensors.torch import save_file

from serverless_sd.images import to_data_uri
from serverless_sd.loras import Fuser, Layer, Library, Reader
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import Limits, LoraChoice, parse
from serverless_sd.settings import Settings
from testkit import precision
from testkit.fake_hub import FakeHub
from testkit.model_factory import save_tiny_lora

from test_app import generate, pixels


@pytest.fixture(scope="module")
def baked(models, tmp_path_factory):
    """An SD model's LORAS_DIR: two LoRAs (PEFT's format, kohya's), a file that is no LoRA, an SDXL LoRA."""
    folder = tmp_path_factory.mktemp("loras")
    save_tiny_lora(models["sd"], folder / "style.safetensors", seed=1)
    save_tiny_lora(models["sd"], folder / "ink.safetensors", seed=2, kohya=True)
    save_file({"weight": torch.randn(8, 8)}, folder / "not-a-lora.safetensors")
    save_tiny_lora(models["sdxl"], folder / "sdxl-style.safetensors", seed=3)
    return folder


@pytest.mark.parametrize("family, kohya", [("sd", False), ("sd", True), ("sdxl", False), ("sdxl", True),
                                           ("sd3", False), ("flux", False)])
def test_fused_weights_are_diffusers_own_fused_weights(models, tmp_path, family, kohya):
    """Both formats, every family: the weights after our fuse are those of diffusers' load_lora_weights + fuse_lora,
    text encoders included."""
    lora = save_tiny_lora(models[family], tmp_path / "lora.safetensors", kohya=kohya)
    reference = AutoPipelineForText2Image.from_pretrained(models[family])
    reference.load_lora_weights(tmp_path, weight_name=lora.name)
    components = [name for name in type(reference)._lora_loadable_modules if getattr(reference, name, None)]
    reference.fuse_lora(components=components, lora_scale=0.7)
    reference.unload_lora_weights()
    ours = AutoPipelineForText2Image.from_pretrained(models[family])
    original = {name: {k: v.clone() for k, v in getattr(ours, name).state_dict().items()} for name in components}
    assert Fuser(ours).apply([(Reader(ours).read(lora, "lora"), 0.7)])
    changed = set()
    for name in components:
        for key, value in getattr(reference, name).state_dict().items():
            assert torch.equal(getattr(ours, name).state_dict()[key], value), (name, key)
            if not torch.equal(value, original[name][key]):
                changed.add(name)
    assert {"text_encoder", "unet" if family in ("sd", "sdxl") else "transformer"} <= changed


def test_a_lora_changes_the_image_and_leaves_nothing_behind(models, baked):
    model = StableDiffusion.load(precision.settings(model_id=str(models["sd"]), loras_dir=baked))
    modules = {id(module) for part in (model.pipe.unet, model.pipe.text_encoder) for module in part.modules()}
    addresses = {name: weight.data_ptr() for name, weight in model.pipe.unet.named_parameters()}

    def image(*loras) -> np.ndarray:
        inputs = {"prompt": "a", "num_inference_steps": 2, "seed": 1, "loras": list(loras)}
        return np.asarray(model.generate(parse(inputs, model.limits)).images[0])

    before = image()
    styled = image({"name": "style"})
    assert not np.array_equal(styled, before)
    # What CUDA graphs and torch.compile rely on: the same modules, the weights changed where they lie.
    assert {id(module) for part in (model.pipe.unet, model.pipe.text_encoder) for module in part.modules()} == modules
    assert {name: weight.data_ptr() for name, weight in model.pipe.unet.named_parameters()} == addresses
    assert np.array_equal(image({"name": "style"}), styled)
    assert np.array_equal(image(), before)  # restored, bit for bit
    assert np.array_equal(image({"name": "style", "scale": 0}), before)
    half = image({"name": "style", "scale": 0.5})
    inked = image({"name": "ink", "scale": 0.8})
    both = image({"name": "style", "scale": 0.5}, {"name": "ink", "scale": 0.8})
    assert len({array.tobytes() for array in (before, styled, half, inked, both)}) == 5
    assert np.array_equal(image({"name": "ink", "scale": 0.8}, {"name": "style", "scale": 0.5}), both)
    assert np.array_equal(image(), before)
    # Every mode holds the same weights: img2img sees the LoRA too.
    picture = model.generate(parse({"prompt": "a", "num_inference_steps": 2, "seed": 1}, model.limits)).images[0]
    img2img = {"prompt": "a", "num_inference_steps": 2, "seed": 1, "image": to_data_uri(picture, "png")}
    plain = np.asarray(model.generate(parse(img2img, model.limits)).images[0])
    lora = np.asarray(model.generate(parse({**img2img, "loras": [{"name": "style"}]}, model.limits)).images[0])
    assert not np.array_equal(plain, lora)


def test_a_fuse_that_fails_half_way_is_undone_by_the_next_request(models, baked, monkeypatch):
    """Out of memory on the tenth layer, say: the next request, with or without LoRAs, starts from the model's own
    weights."""
    pipe = AutoPipelineForText2Image.from_pretrained(models["sd"])
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    fuser = Fuser(pipe)
    lora = Reader(pipe).read(baked / "style.safetensors", "style")
    calls, real = [], Layer.delta

    def failing(layer, device):
        calls.append(layer)
        if len(calls) == 10:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(layer, device)

    monkeypatch.setattr(Layer, "delta", failing)
    with pytest.raises(torch.OutOfMemoryError):
        fuser.apply([(lora, 1.0)])
    monkeypatch.undo()
    assert any(not torch.equal(v, original[k]) for k, v in pipe.unet.state_dict().items())  # half-way
    assert fuser.apply([])
    assert all(torch.equal(v, original[k]) for k, v in pipe.unet.state_dict().items())


def test_compiled_model_takes_a_lora_without_recompiling(models, baked):
    """COMPILE=1 (torch.compile, here on the CPU, with diffusers' fused QKV projections): the LoRA changes the
    image as it does in eager mode, and switching LoRAs compiles nothing."""
    settings = Settings(model_id=str(models["sd"]), device="cpu", dtype="float32", loras_dir=baked)
    eager = StableDiffusion.load(settings)
    compiled = StableDiffusion.load(settings.model_copy(update={"compile": True}))
    assert any(getattr(module, "fused_projections", False) for module in compiled.pipe.unet.modules())

    def image(model, *loras) -> np.ndarray:
        inputs = {"prompt": "a", "num_inference_steps": 2, "seed": 1, "loras": list(loras)}
        return np.asarray(model.generate(parse(inputs, model.limits)).images[0], dtype=np.int16)

    compiled.warm_up()  # compiles the native size, as the requests below are
    first = image(compiled)
    with torch._dynamo.config.patch(error_on_recompile=True):
        styled = image(compiled, {"name": "style"})
        inked = image(compiled, {"name": "ink", "scale": 0.5})
        again = image(compiled)
    assert np.array_equal(again, first) and not any(c.fallen for c in compiled.compiled)  # the compiled code ran
    for ours, theirs in ((first, image(eager)), (styled, image(eager, {"name": "style"})),
                         (inked, image(eager, {"name": "ink", "scale": 0.5}))):
        assert np.abs(ours - theirs).max() <= 2  # compiled kernels round differently, by a level at most here
    assert np.abs(styled - first).mean() > 5  # the LoRA, far past that


def test_read_loras_are_kept_in_memory_up_to_a_bound(models, baked):
    pipe = AutoPipelineForText2Image.from_pretrained(models["sd"])
    library = Library(pipe, Settings(model_id=str(models["sd"]), loras_dir=baked, lora_memory_bytes=300_000))
    baked_limits = limits(loras=tuple(library.baked))
    style = library.lora(choice(baked_limits, name="style"))
    assert library.lora(choice(baked_limits, name="style")) is style
    library.lora(choice(baked_limits, name="ink"))
    assert list(library.memory) == ["ink"]  # 2 x 234 kB is over the bound: the least recently used went


@pytest.fixture(scope="module")
def hub(baked):
    """Hugging Face's hub, as far as LoRAs go: one repo with one LoRA, one with two, and a large file."""
    hub = FakeHub()
    for repo, files in (("someone/style-lora", ["style"]), ("someone/two-loras", ["style", "ink"])):
        folder = baked.parent / repo.replace("/", "--")
        folder.mkdir(exist_ok=True)
        for name in files:
            shutil.copy(baked / f"{name}.safetensors", folder / f"{name}.safetensors")
        hub.add(repo, folder)
    large = baked.parent / "large"
    large.mkdir(exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(600_000)}, large / "big.safetensors")
    hub.add("someone/large", large)
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def lora_app(start_app, models, baked, hub, tmp_path_factory):
    return start_app({"MODEL_ID": str(models["sd"]), "LORAS_DIR": str(baked), "LORA_HOSTS": hub.url,
                      "HF_ENDPOINT": hub.url, "MAX_LORA_BYTES": "1000000", "MAX_LORAS": "3",
                      "LORA_CACHE_DIR": str(tmp_path_factory.mktemp("lora-cache"))})


def test_baked_by_name_fetched_by_url_or_hub_id_the_same_lora_the_same_image(lora_app, hub):
    listing = httpx.get(lora_app.url + "/loras").json()
    assert [lora["name"] for lora in listing["loras"]] == ["ink", "not-a-lora", "sdxl-style", "style"]
    assert listing["max_loras"] == 3 and listing["fetched_at_run_time"] is True
    by_name = generate(lora_app, seed=5, loras=[{"name": "style", "scale": 0.9}])
    assert by_name["loras"] == [{"name": "style", "url": None, "scale": 0.9}]
    url = f"{hub.url}/someone/two-loras/resolve/main/style.safetensors"
    fetched_before = len(hub.downloaded)
    for lora in ({"url": url, "scale": 0.9}, {"name": "someone/style-lora", "scale": 0.9},
                 {"name": "someone/two-loras/style.safetensors", "scale": 0.9}, {"url": url, "scale": 0.9}):
        answer = generate(lora_app, seed=5, loras=[lora])
        assert np.array_equal(pixels(answer["images"][0]), pixels(by_name["images"][0])), lora
    assert len(hub.downloaded) == fetched_before + 2  # each URL once: the second time it came from the cache
    assert not np.array_equal(pixels(generate(lora_app, seed=5)["images"][0]), pixels(by_name["images"][0]))


@pytest.mark.parametrize("loras, field, message", [
    ([{"name": "nope"}], "loras.0.name", "unknown LoRA 'nope' (this deployment has: ink, not-a-lora, sdxl-style"),
    ([{"name": "not-a-lora"}], "loras.0.name", "not a LoRA this model (StableDiffusionPipeline) can use"),
    ([{"name": "sdxl-style"}], "loras.0.name", "not a LoRA this model (StableDiffusionPipeline) can use"),
    ([{"name": "style"}, {"url": "https://example.com/a.safetensors"}], "loras.1.url",
     "its host 'example.com' is not one this deployment fetches from"),
    ([{"url": "{hub}/someone/style-lora/resolve/main/missing.safetensors"}], "loras.0.url", "answered HTTP 404"),
    ([{"url": "{hub}/someone/large/resolve/main/big.safetensors"}], "loras.0.url", "over the limit of 1000000"),
    ([{"name": "someone/two-loras"}], "loras.0.name", "holds 2 .safetensors files at its top: name one"),
    ([{"name": "someone/missing"}], "loras.0.name", "answered HTTP 404"),
    ([{"name": "style"}] * 4, "loras", "at most 3 LoRAs per request (got 4)"),
    ([{"scale": 0.5}], "loras.0.name", "send either name or url"),
    ([{"name": "style", "url": "{hub}/x.safetensors"}], "loras.0.name", "send either name or url"),
    ([{"name": "style", "scale": 5}], "loras.0.scale", "less than or equal to 4"),
    ([{"name": "style", "weight": 1}], "loras.0.weight", "unknown field (known fields: name, scale, url)"),
    ({"name": "style"}, "loras", "must be an array (got an object)"),
    (["style"], "loras.0", "must be an object (got a string)"),
])
def test_a_bad_lora_is_a_422_naming_it_and_the_replica_keeps_serving(lora_app, hub, loras, field, message):
    if isinstance(loras, list) and isinstance(loras[0], dict):
        loras = [{key: value.replace("{hub}", hub.url) if isinstance(value, str) else value
                  for key, value in lora.items()} for lora in loras]
    response = lora_app.post({"prompt": "a", "num_inference_steps": 1, "loras": loras})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field and message in error["message"], error
    assert generate(lora_app, seed=1)["loras"] == []


def test_fetched_files_are_kept_on_disk_up_to_a_bound(models, baked, hub, tmp_path):
    cache = tmp_path / "cache"
    pipe = AutoPipelineForText2Image.from_pretrained(models["sd"])
    library = Library(pipe, Settings(model_id=str(models["sd"]), loras_dir=tmp_path, lora_hosts=hub.url,
                                     lora_cache_dir=cache, lora_cache_bytes=300_000))
    urls = [f"{hub.url}/someone/two-loras/resolve/main/{name}.safetensors" for name in ("style", "ink")]
    first, second = (choice(limits(lora_hosts=hub.url), url=url) for url in urls)
    kept = library.file(first)
    assert library.file(second) != kept and not kept.exists()  # 2 x 234 kB is over the bound: the older went
    assert [path.name for path in cache.iterdir()] == [library.file(second).name]


def limits(**lora_sources) -> Limits:
    return Limits(64, 64, 4096, 64, 10, 1, 100, 4096, 1 << 20, **lora_sources)


def choice(limits: Limits, **fields) -> LoraChoice:
    return LoraChoice.model_validate(fields, context={"limits": limits})
