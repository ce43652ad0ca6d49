"""Whether what is installed is enough to run app.py and bench/gpu.py, offline: every module they import, then one
generation of a tiny random-weight model through the app's own path, with a weighted prompt (compel) and a LoRA
(peft), which load lazily, on whatever device the app picks.

bench/gpu.sh runs it first on the GPU machine, before anything is timed; tests/test_wheels.py runs it here in an
environment holding only the GPU image's packages and the wheels bench/wheels.py carries. Prints one JSON line: the
versions that served, and the device.
"""

import importlib
import json
import sys
import tempfile
from pathlib import Path

# Every module of the app and of the GPU check (the gateway's are not run there).
MODULES = ["app", "download", "bench.gpu", "bench.common", "testkit.model_factory",
           *(f"serverless_sd.{name}" for name in (
               "settings", "schema", "weights", "families", "pipelines", "prompts", "schedulers", "seeds",
               "cuda_graphs", "compiled", "loras", "fetching", "images", "progress", "previews", "storage",
               "serving", "runpod_worker", "health", "origin", "logs", "openapi"))]
VERSIONS = ["torch", "diffusers", "transformers", "huggingface_hub", "tokenizers", "accelerate", "safetensors",
            "peft", "compel", "potassium", "pydantic", "PIL", "numpy", "scipy"]


def main() -> None:
    for name in MODULES:
        importlib.import_module(name)
    import torch

    from serverless_sd.pipelines import StableDiffusion
    from serverless_sd.schema import parse
    from serverless_sd.settings import Settings
    from testkit import model_factory

    with tempfile.TemporaryDirectory() as tmp:
        folder = model_factory.save_tiny_sd(Path(tmp) / "tiny-sd")
        loras = Path(tmp) / "loras"
        model_factory.save_tiny_lora(folder, loras / "style.safetensors")
        model = StableDiffusion.load(Settings(model_id=str(folder), loras_dir=loras, warm_up="off"))
        inputs = {"prompt": "a (red:1.3) cube", "num_inference_steps": 2, "seed": 1, "loras": [{"name": "style"}]}
        generated = model.generate(parse(inputs, model.limits))
        assert generated.images[0].size == (64, 64)
    versions = {name: getattr(sys.modules.get(name) or importlib.import_module(name), "__version__", "?")
                for name in VERSIONS}
    print(json.dumps({"ok": True, "device": str(model.pipe.device), "torch_cuda": torch.version.cuda, **versions}))


if __name__ == "__main__":
    main()
