"""Live progress in ComfyUI's page: ``stagetrace.live`` WebSocket messages while a prompt runs.

The hooks tell :data:`LIVE` what happens (a node starts, a stage opens, a denoising step ends); it sends the
page that queued the prompt (ComfyUI's ``client_id``) the current node and stage, step i of N and the step
rate, at most ``MAX_PER_S`` messages a second (the first and the last step always). When StageTrace has
written the prompt's trace, the writer thread sends ``state: "done"``: the panel's data route can answer
from then on. Clients that do not know the message type ignore it.

    {"prompt_id", "state": "running" | "done", "node_id", "class_type", "stage", "step", "steps", "rate",
     "elapsed_s", "outcome"}

Sending goes through ``PromptServer.send_sync``, which hands the message to the server's event loop
thread-safely; every call here is cheap and never raises into the hooks (the callers guard it too).
"""

from __future__ import annotations

import threading
import time

from ..core.comfyui import prompt_server

EVENT = "stagetrace.live"
MAX_PER_S = 10.0


class Live:
    def __init__(self) -> None:
        self.enabled = True
        self._lock = threading.Lock()
        self._reset(None, None)

    def _reset(self, prompt_id, client_id) -> None:
        self.prompt_id, self.client_id = prompt_id, client_id
        self.node_id = self.class_type = self.stage = None
        self.step = self.steps = None
        self.started = time.monotonic()
        self.first_step_at = None
        self.last_sent = 0.0

    # --- what the hooks report ------------------------------------------------------------------

    def begin(self, prompt_id: str, client_id: str | None) -> None:
        with self._lock:
            self._reset(prompt_id, client_id if isinstance(client_id, str) and client_id else None)
        self._send(force=True)

    def node(self, node_id: str, class_type: str) -> None:
        self.node_id, self.class_type, self.stage, self.step, self.steps = node_id, class_type, None, None, None
        self._send(force=True)

    def stage_opened(self, stage: str) -> None:
        if stage in ("prompt", "node", "sample.step") or stage == self.stage:
            return
        self.stage = stage
        self._send(force=True)  # a new stage is news (there are a few a prompt); steps are rate-limited

    def step_done(self, step: int, steps: int | None) -> None:
        now = time.monotonic()
        if self.first_step_at is None or step <= 1:
            self.first_step_at = now
        self.step, self.steps, self.stage = step, steps, "sample"
        self._send(force=step <= 1 or (steps is not None and step >= steps))

    def done(self, prompt_id: str, outcome: str, client_id: str | None) -> None:
        """The writer thread wrote the prompt's trace and report: the panel may fetch them."""
        self._emit({"prompt_id": prompt_id, "state": "done", "outcome": outcome}, client_id)

    # --- sending --------------------------------------------------------------------------------

    def _send(self, force: bool = False) -> None:
        if not self.enabled or self.prompt_id is None:
            return
        now = time.monotonic()
        if not force and now - self.last_sent < 1.0 / MAX_PER_S:
            return
        self.last_sent = now
        rate = None
        if self.step and self.first_step_at is not None and self.step > 1 and now > self.first_step_at:
            rate = (self.step - 1) / (now - self.first_step_at)
        self._emit({"prompt_id": self.prompt_id, "state": "running", "node_id": self.node_id,
                    "class_type": self.class_type, "stage": self.stage, "step": self.step, "steps": self.steps,
                    "rate": rate, "elapsed_s": now - self.started}, self.client_id)

    def _emit(self, data: dict, client_id: str | None) -> None:
        if not self.enabled:
            return
        server = prompt_server()
        if server is None or not client_id:  # no page to tell: an API client without a client id, a CLI run
            return
        try:
            server.send_sync(EVENT, data, client_id)
        except Exception as exc:  # noqa: BLE001 - the prompt runs on; the page just hears less
            from ..core.log import log_once

            log_once("live", "live progress messages could not be sent (%s: %s)", type(exc).__name__, exc)


LIVE = Live()
