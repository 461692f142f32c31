"""Hugging Face Space entry point: the InfoSAM demo (examples/demo.py) as `app.py`.

Set the Space's variables to choose the models: INFOSAM_ADAPTER (an adapter Hub id, e.g.
you/sam-polyp-infosam) and optionally INFOSAM_BASE_MODEL. Without them the Space serves the
built-in tiny SAM (and outputs/infosam-builtin if it was uploaded). Run locally with
`python app.py` (after `pip install -e ".[demo]"`); docs/deploy.md has the upload commands.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples"))

from demo import Segmenter, build_demo  # noqa: E402

demo = build_demo(Segmenter(os.environ.get("INFOSAM_ADAPTER") or None, os.environ.get("INFOSAM_BASE_MODEL") or None))

if __name__ == "__main__":
    demo.launch()
