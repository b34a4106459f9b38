"""The stage vocabulary (shared/design.md), usable without the C extension.

The C core (csrc/st_stage.c) is the source of truth; tests check that these
tuples equal ``_native.STAGES`` and ``_native.OUTCOMES``.
"""

STAGES = (
    "prompt",
    "node",
    "model_load.read",
    "model_load.build",
    "model_load.to_device",
    "anatomy",
    "text_encode",
    "sample",
    "sample.step",
    "vae_decode",
    "vae_encode",
    "save",
    "other",
)
OUTCOMES = ("ok", "error", "interrupted", "pending", "cached")

PROMPT = STAGES.index("prompt")
NODE = STAGES.index("node")
ANATOMY = STAGES.index("anatomy")

OK = OUTCOMES.index("ok")
ERROR = OUTCOMES.index("error")
INTERRUPTED = OUTCOMES.index("interrupted")
PENDING = OUTCOMES.index("pending")
CACHED = OUTCOMES.index("cached")
