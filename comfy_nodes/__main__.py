"""``python -m comfy_nodes`` (or ``python -m stagetrace`` when installed) runs the CLI."""

import sys

from .cli.main import main

sys.exit(main())
