"""An ordered, bounded process-pool map for the per-file stages on one machine.

`Pool.imap` would read the whole input ahead of the workers (its feeder thread has no back-pressure), holding the
corpus in memory; here at most `2 * num_workers` chunks are in flight. Results come back in input order, so the
output does not depend on the number of workers.
"""

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

_worker_fn: Callable | None = None


def _init_worker(fn: Callable, initializer: Callable | None, initargs: tuple) -> None:
    global _worker_fn
    _worker_fn = fn
    if initializer is not None:
        initializer(*initargs)


def _run_chunk(chunk: list) -> list:
    return [_worker_fn(item) for item in chunk]


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it, else spawn; never plain fork.

    The parent may hold threads (tqdm's monitor, the tokenizers pool) that fork would copy mid-lock. A fork server
    starts clean, imports the stages once, and forks each worker from that warm state: spawn would re-import
    datasketch (and with it scipy, ~1 s) in every worker of every phase.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["extensions.code_corpus.stages", "datasketch"])
        return context
    return multiprocessing.get_context("spawn")


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def parallel_map(
    fn: Callable,
    items: Iterable,
    num_workers: int = 1,
    chunk_size: int = 64,
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> Iterator:
    """`map(fn, items)` over `num_workers` processes, in order. `fn` (a module-level function or a partial of one)
    ships to each worker once; `initializer(*initargs)` runs once per worker, also in-process when num_workers is 1.
    """
    if num_workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    with _context().Pool(num_workers, initializer=_init_worker, initargs=(fn, initializer, initargs)) as pool:
        pending: deque = deque()
        for chunk in _chunks(items, chunk_size):
            pending.append(pool.apply_async(_run_chunk, (chunk,)))
            if len(pending) >= 2 * num_workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
