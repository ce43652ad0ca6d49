"""Build step: fetch MODEL_ID's weights into MODELS_DIR, so that at run time nothing is downloaded.

The Dockerfile runs `python3 download.py` with the MODEL_ID build argument; run it yourself before `python3 app.py`.
"""

import sys

from serverless_sd.settings import Settings
from serverless_sd.weights import WeightsError, download

if __name__ == "__main__":
    settings = Settings.from_env()
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        folder = download(settings.model_id, settings.models_dir, token)
    except WeightsError as error:
        sys.exit(f"download.py: {error}")
    print(f"download.py: {settings.model_id} is ready in {folder}")
