"""Fixtures of the serve tests: a tiny random-init model, the server started from the command line, and one started
through the Python API with faults injected into its worker (serve_faults.py)."""

from pathlib import Path

import pytest
import torch
from serve_server import API_KEY, Server

from litgpt_lite.checkpoint import save_checkpoint
from litgpt_lite.config import Config
from litgpt_lite.model import GPT
from litgpt_lite.tokenizer import Tokenizer

BLOCK_SIZE = 256


@pytest.fixture(scope="session")
def tiny_checkpoint(smollm2_hf, tmp_path_factory) -> Path:
    """A random 2-layer model with SmolLM2's tokenizer (and so its chat template)."""
    torch.manual_seed(0)
    config = Config(
        name="tiny-serve", block_size=BLOCK_SIZE, vocab_size=49152, padding_multiple=64, n_layer=2, n_embd=32,
        n_head=4, n_query_groups=2, intermediate_size=64, norm_class="RMSNorm", mlp_class="LLaMAMLP",
        tie_embeddings=True,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("serve") / "tiny"
    return save_checkpoint(GPT(config), config, out, tokenizer_dir=smollm2_hf)


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """`litgpt_lite serve` with its default limits (4 MiB bodies, 16 choices), greedy."""
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    args = ["--api_key", API_KEY, "--temperature", "0", "--max_batch_size", "8", "--batch_timeout", "0.2"]
    srv = Server.cli(tiny_checkpoint, log, *args)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def faulty_server(tiny_checkpoint, tmp_path_factory):
    """The Python API serving FaultyGenerationAPI (slow steps, a fault on a word), its key from the environment."""
    log = tmp_path_factory.mktemp("serve_log") / "faulty.log"
    settings = {"temperature": 0, "max_batch_size": 8, "batch_timeout": 0.2}
    srv = Server.faulty(tiny_checkpoint, log, env={"LITGPT_LITE_API_KEY": API_KEY}, **settings)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint) -> Tokenizer:
    return Tokenizer(tiny_checkpoint)
