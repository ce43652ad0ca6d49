"""Build step: fetch MODEL_ID's weights (and CONTROLNET_ID's, and LORA_IDS') into MODELS_DIR: at run time nothing is
downloaded (unless the operator allow-lists hosts for LoRAs, LORA_HOSTS).

The Dockerfile runs `python3 download.py` with the MODEL_ID build argument; run it yourself before `python3 app.py`.
"""

import sys

from serverless_sd import families
from serverless_sd.families import FamilyError
from serverless_sd.settings import Settings
from serverless_sd.weights import WeightsError, download, download_loras

if __name__ == "__main__":
    settings = Settings.from_env()
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        model = download(settings.model_id, settings.models_dir, token, safety_checker=settings.safety_checker,
                         drop_t5=settings.drop_t5)
        print(f"download.py: {settings.model_id} is ready in {model}")
        if settings.controlnet_id:
            folder = download(settings.controlnet_id, settings.models_dir, token, one_model=True,
                              variable="CONTROLNET_ID")
            print(f"download.py: ControlNet {settings.controlnet_id} is ready in {folder}")
        if settings.preview_every:
            decoder = settings.preview_decoder or families.of(model).preview_decoder
            download(decoder, settings.models_dir, token, one_model=True, variable="PREVIEW_DECODER")
            print(f"download.py: the preview decoder {decoder} is ready")
        for lora in download_loras(settings.lora_ids, settings.loras_folder, settings.models_dir, token):
            print(f"download.py: LoRA {lora.stem} is ready in {lora}")
    except (WeightsError, FamilyError) as error:
        sys.exit(f"download.py: {error}")
