"""The worker under the name RunPod's tools look for (the Hub wants a handler.py): app.py as a RunPod Serverless
worker. The image runs app.py itself, which becomes this worker wherever RunPod starts it (it sets
RUNPOD_WEBHOOK_GET_JOB). Locally, with the runpod SDK's own flags:

    python3 .runpod/handler.py --rp_serve_api --rp_api_port 8000     # /run, /runsync, /status on one handler
    python3 .runpod/handler.py --test_input '{"input": {"prompt": "a lighthouse"}}'   # one job, then exit
"""

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
