"""A request whose client left, in a batch with live requests: the worker loop (in this process, on the real model and
tokenizer) cancels its row in the generation core, so it stops computing while the others answer as before."""

import multiprocessing
import uuid

import pytest

from litgpt_lite.serve.worker import BatchingLoop, GenerationAPI, WorkerChannel


class Transport:
    """Collects what the loop sends back; tells the channel that a client left once it got `leave_after` tokens."""

    def __init__(self, channel: WorkerChannel, leaving: str | None, leave_after: int) -> None:
        self.channel, self.leaving, self.leave_after = channel, leaving, leave_after
        self.texts: dict[str, list[str]] = {}

    def send(self, item, consumer_id: int) -> None:
        uid, (data, _status, _kind, _worker) = item
        if isinstance(data, dict):
            self.texts.setdefault(str(uid), []).append(data["text"])
        if str(uid) == self.leaving and len(self.texts.get(str(uid), [])) == self.leave_after:
            self.channel.cancel(uid)


@pytest.fixture(scope="module")
def manager():
    with multiprocessing.Manager() as m:
        yield m


def test_a_dropped_row_leaves_the_batch_and_the_live_rows_answer_as_before(tiny_checkpoint, tokenizer, manager):
    channel = WorkerChannel(manager)
    api = GenerationAPI(tiny_checkpoint, "32-true", None, "none", channel)
    api.setup("cpu")
    batch_sizes = []
    api.model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    prompts = ["Once upon a time", "The capital of France", "def main():"]
    params = {"max_new_tokens": 24, "temperature": 0.0, "ignore_eos": True}
    uids = [str(uuid.uuid4()) for _ in prompts]
    batch = [(0, uid, None, {"prompt": tokenizer.encode(p), "params": params}) for uid, p in zip(uids, prompts)]

    def run(leaving: str | None) -> Transport:
        transport = Transport(channel, leaving, leave_after=5)
        batch_sizes.clear()
        BatchingLoop(channel)._run(api, transport, batch)
        return transport

    alone = run(None)
    dropped = run(uids[1])
    for uid in (uids[0], uids[2]):
        assert dropped.texts[uid] == alone.texts[uid]
    assert len(alone.texts[uids[1]]) == 24 and len(dropped.texts[uids[1]]) == 5
    # the prefill and 4 steps with 3 rows, a 5th queued before the cancel was read, then 2 rows to the 24th token
    assert batch_sizes == [3] * 6 + [2] * 18
    assert channel.cancelled() == set()  # the claimed cancellation is forgotten
