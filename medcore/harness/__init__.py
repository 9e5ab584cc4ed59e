"""An lm-evaluation-harness task for MedMCQA files in the original release format (``pip install -e .[harness]``).

``medcore_medmcqa`` asks what the harness's built-in ``medmcqa`` task asks (the same prompt, the letters A-D as
the four continuations), but reads local files, so it runs with no Hub::

    lm_eval --model hf --model_args pretrained=<model>,peft=<adapter>,dtype=float32 \\
        --tasks medcore_medmcqa --include_path <TASK_DIR> --metadata '{"data_dir": "<folder with dev.json>"}'
"""
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
TASK_NAME = "medcore_medmcqa"
