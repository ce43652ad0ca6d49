"""Which files a MODEL_ID needs: one rule for download.py (build time) and the loader (run time)."""

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import (
    get_cached_repo_tree,
    hf_hub_download,
    model_info,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

try:  # the HTTP library huggingface_hub 2.x is built on (1.x used httpx)
    from httpx2 import TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError

from . import families

if TYPE_CHECKING:
    import torch  # imported where used: download.py needs no torch

SAFETENSORS_ONLY = ("has no safetensors weights{what}; this template loads safetensors only (a .bin or .ckpt file "
                    "can run code when it is loaded): pick a repo that publishes .safetensors")


class WeightsError(RuntimeError):
    """The model cannot be had: the message says what to do about it."""


HALF_VARIANTS = ("fp16", "bf16")  # in the order taken


def half_variant(filenames: Iterable[str]) -> str | None:
    """Take the repo's 16-bit safetensors where it ships them (fp16, else bf16): half the download, and the
    precision we serve in."""
    names = list(filenames)
    return next((variant for variant in HALF_VARIANTS if any(_is(name, variant) for name in names)), None)


def _is(filename: str, variant: str | None) -> bool:
    """Whether a safetensors file is of that variant (None: of none)."""
    if variant is None:
        return not any(_is(filename, half) for half in HALF_VARIANTS)
    return filename.endswith(f".{variant}.safetensors")


def download(model_id: str, models_dir: Path, token: str | None = None, safety_checker: bool = True,
             one_model: bool = False, drop_t5: bool = False, variable: str = "MODEL_ID") -> Path:
    """Fetch only what the pipeline loads (safetensors over .bin/.ckpt, the fp16, else bf16, variant if any) into
    models_dir: the folders model_index.json names, never a repo's single-file checkpoints beside them (SD 3.5's and
    FLUX.1's).

    With safety_checker False the checker's weights are skipped, with drop_t5 SD 3's T5 encoder. A one_model repo
    (a ControlNet, a preview decoder) holds one model, not a pipeline. Messages name the setting, `variable`.
    """
    if Path(model_id).is_dir():
        return Path(model_id)
    try:
        files = [sibling.rfilename for sibling in model_info(model_id, token=token).siblings or []]
        if one_model:
            return _fetch_one_model(model_id, models_dir, files, variable, token=token)
        return _fetch(model_id, models_dir, files, token=token, **_skipped(safety_checker, drop_t5))
    except GatedRepoError:
        raise WeightsError(
            f"{variable} {model_id!r} is gated: accept its terms on its Hugging Face page, then pass a token "
            "that can read it as HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{variable} {model_id!r} was not found on the Hugging Face hub: check the id, or, if the repo is "
            "private, pass a token that can read it as HF_TOKEN"
        ) from None
    except HfHubHTTPError as error:
        raise WeightsError(f"downloading {variable} {model_id!r} failed: {error}") from None
    except TransportError as error:
        raise WeightsError(
            f"cannot reach the Hugging Face hub to download {model_id!r} ({type(error).__name__}: {error}). Check the "
            "network (or HF_ENDPOINT, for a mirror), or set MODEL_ID to a local diffusers folder; `make demo` runs "
            "everything on a tiny local model with no download"
        ) from None
    except OSError as error:  # diffusers' own refusal: no safetensors for some component
        if "safetensors" not in str(error):
            raise
        raise WeightsError(f"{variable} {model_id!r} " + SAFETENSORS_ONLY.format(what=" for every component")) from None


def download_loras(lora_ids: str, folder: Path, cache_dir: Path, token: str | None = None) -> list[Path]:
    """LORA_IDS, comma-separated, each `[name=]source`, into folder/<name>.safetensors (what the app serves by
    name): a source is a local .safetensors file, a hub repo holding one (owner/repo), or one file of a repo
    (owner/repo/path/file.safetensors). The name defaults to the file's (a repo's: the repo's)."""
    baked = []
    for entry in (item.strip() for item in lora_ids.split(",")):
        if not entry:
            continue
        name, _, source = entry.rpartition("=")
        try:
            path = _lora_file(source.strip(), cache_dir, token)
        except GatedRepoError:
            raise WeightsError(f"LORA_IDS {source!r} is gated: accept its terms on its page, then pass HF_TOKEN") \
                from None
        except (RepositoryNotFoundError, HfHubHTTPError, TransportError) as error:
            raise WeightsError(f"LORA_IDS {source!r} cannot be had: {type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''}") from None
        name = name.strip() or (source.split("/")[1] if _is_repo(source) else Path(source).stem)
        if not LORA_NAME.fullmatch(name):
            raise WeightsError(f"LORA_IDS: {name!r} cannot name a LoRA (letters, digits, . _ -; write name=source)")
        folder.mkdir(parents=True, exist_ok=True)
        baked.append(Path(shutil.copyfile(path, folder / f"{name}.safetensors")))
    return baked


LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _is_repo(source: str) -> bool:
    return source.count("/") == 1 and not Path(source).exists()


def _lora_file(source: str, cache_dir: Path, token: str | None) -> Path:
    if Path(source).is_file():
        if not source.endswith(".safetensors"):
            raise WeightsError(f"LORA_IDS {source!r}: LoRAs load from .safetensors files only")
        return Path(source)
    parts = source.split("/")
    if len(parts) < 2 or not all(parts):
        raise WeightsError(f"LORA_IDS {source!r} is neither a file here nor a hub id (owner/repo[/file.safetensors])")
    repo, file = "/".join(parts[:2]), "/".join(parts[2:])
    if not file:
        found = [sibling.rfilename for sibling in model_info(repo, token=token).siblings or []
                 if sibling.rfilename.endswith(".safetensors") and "/" not in sibling.rfilename]
        if len(found) != 1:
            raise WeightsError(f"LORA_IDS {source!r} holds {len(found)} .safetensors files at its top: name one, as "
                               f"{repo}/<file>.safetensors ({', '.join(found[:8])})")
        file = found[0]
    if not file.endswith(".safetensors"):
        raise WeightsError(f"LORA_IDS {source!r}: LoRAs load from .safetensors files only")
    return Path(hf_hub_download(repo, file, cache_dir=cache_dir, token=token))


def locate(model_id: str, places: Path | Sequence[Path], safety_checker: bool = True, one_model: bool = False,
           drop_t5: bool = False, variable: str = "MODEL_ID") -> Path:
    """The folder to load: MODEL_ID itself when it is one, else its snapshot in the first of `places` (hub caches:
    what download.py baked in, then the host's cached models) that holds all it needs. Never the network."""
    if Path(model_id).is_dir():
        return Path(model_id)
    places = [places] if isinstance(places, Path) else list(places)
    for place in places:
        if not place.is_dir():
            continue
        try:
            files = [entry.path for entry in get_cached_repo_tree(model_id, cache_dir=place)]
            if one_model:
                return _fetch_one_model(model_id, place, files, variable, local_files_only=True)
            return _fetch(model_id, place, files, local_files_only=True, **_skipped(safety_checker, drop_t5))
        except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, ValueError):
            continue
    raise WeightsError(
        f"{variable} {model_id!r} is not in {' nor in '.join(str(place) for place in places)}: run `python3 "
        f"download.py` with the same {variable} (the Dockerfile does this at build time), or, on RunPod, choose it "
        "as the endpoint's cached model"
    )


def _skipped(safety_checker: bool, drop_t5: bool) -> dict:
    # diffusers downloads no component passed in explicitly (and ignores those the pipeline does not have).
    return {**({} if safety_checker else {"safety_checker": None}),
            **({"text_encoder_3": None, "tokenizer_3": None} if drop_t5 else {})}


def _fetch_one_model(model_id: str, models_dir: Path, files: list[str], variable: str, **hub_options) -> Path:
    weights_file = next((name for name in (*(f"diffusion_pytorch_model.{v}.safetensors" for v in HALF_VARIANTS),
                                           "diffusion_pytorch_model.safetensors") if name in files), None)
    if weights_file is None:
        raise WeightsError(f"{variable} {model_id!r} " + SAFETENSORS_ONLY.format(what=""))
    return Path(snapshot_download(model_id, cache_dir=models_dir, allow_patterns=["config.json", weights_file],
                                  **hub_options))


def _fetch(model_id: str, models_dir: Path, files: list[str], **hub_options) -> Path:
    from diffusers import DiffusionPipeline  # diffusers' own rule: the files its from_pretrained will open

    return Path(DiffusionPipeline.download(model_id, cache_dir=models_dir, variant=half_variant(files),
                                           use_safetensors=True, **hub_options))


def first_guess(model_id: str, places: Sequence[Path], one_model: bool = False) -> Path | None:
    """The folder locate() will most likely choose, found from the hub cache's layout alone (no diffusers, no
    check that every file is there): for reading the weights ahead while the libraries import."""
    if Path(model_id).is_dir():
        return Path(model_id)
    for place in places:
        found = try_to_load_from_cache(model_id, "config.json" if one_model else "model_index.json", cache_dir=place)
        if isinstance(found, str):
            return Path(found).parent
    return None


def weight_files(folder: Path, left_out: Iterable[str] = ()) -> list[Path]:
    """The safetensors files from_pretrained reads from a pipeline's folder (those of the components its
    model_index.json declares, less `left_out`) or from a single model's: each in the folder's variant where the
    component has it, as diffusers picks them."""
    variant = local_variant(folder)
    pipeline = (folder / "model_index.json").is_file()
    files = []
    for name in sorted(families.components(folder) - set(left_out)) if pipeline else [""]:
        found = sorted((folder / name).glob("*.safetensors"))
        files += [path for path in found if _is(path.name, variant)] or [path for path in found if _is(path.name, None)]
    return files


def local_variant(folder: Path) -> str | None:
    return half_variant(path.name for path in folder.rglob("*.safetensors"))


def stored_dtypes(folder: Path) -> dict[str, "torch.dtype"]:
    """Each component's floating-point dtype as stored, read from the header of its first safetensors file (no
    weight is read); components stored otherwise are left out. For a pipeline folder: by component; for a single
    model: {"": dtype}. Integer tensors (a text encoder's position ids) say nothing of the weights' dtype."""
    import torch
    from safetensors import safe_open

    variant = local_variant(folder)
    dtypes = {}
    for component in [folder, *sorted(path for path in folder.iterdir() if path.is_dir())]:
        files = sorted(path for path in component.glob("*.safetensors") if _is(path.name, variant))
        if files:
            with safe_open(files[0], framework="pt") as weights:
                stored = (weights.get_slice(name).get_dtype() for name in weights.keys())
                floating = next((dtype for dtype in stored if dtype in _SAFETENSORS), None)
            if floating:
                dtypes["" if component == folder else component.name] = getattr(torch, _SAFETENSORS[floating])
    return dtypes


_SAFETENSORS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
