"""Inference workers with faults injected from the tests: subclasses of `GenerationAPI`, served through the Python API
(`litgpt_lite.serve.run`) by a launcher process. Workers are spawned processes, so these classes live in a module
they can import by name (this folder is on their `sys.path`, inherited from the launcher)."""

import json
import time

from litgpt_lite.serve import ServeSettings, run
from litgpt_lite.serve.worker import GenerationAPI

FAULT_WORD = "KABOOM"
STEP_SECONDS = 0.05  # a decode step at least this long: a 250-token answer takes >= 12.5 s


class FaultyGenerationAPI(GenerationAPI):
    """Fails a batch after its first decode step when one of its prompts contains FAULT_WORD; every step takes at
    least STEP_SECONDS, so an abandoned generation that ran to its end would be easy to see."""

    def predict(self, items):
        fail = any(FAULT_WORD in self.tokenizer.decode(item["prompt"], skip_special_tokens=True) for item in items)
        for step, deltas in enumerate(super().predict(items)):
            if step == 1 and fail:
                raise RuntimeError("fault injected by the test")
            time.sleep(STEP_SECONDS)
            yield deltas


def main(settings_json: str) -> None:
    run(ServeSettings(**json.loads(settings_json)), api_class=FaultyGenerationAPI)
