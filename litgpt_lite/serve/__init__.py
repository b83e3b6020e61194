"""`litgpt_lite serve`: an OpenAI-compatible HTTP server on LitServe, over the one generation core.

- `openai`: request bodies, errors in OpenAI's shape, and answers (JSON and SSE);
- `spec`: the API server side (routes, API key, prompts and their limits, hand-off to the workers);
- `encoding`: prompt tokenization off the event loop;
- `worker`: the inference worker side (the model, the batching loop, cancellation of abandoned rows);
- `command`: the `serve` command and the life of the server's processes.
"""

from litgpt_lite.serve.command import ServeSettings, run, serve

__all__ = ["ServeSettings", "run", "serve"]
