"""A frame's steps overlapped: while the model runs on one frame, worker threads decode and
normalise the next ones and turn finished logits into class ids and PNG files, and the
results still come out in input order. Decoding, ONNX Runtime, PyTorch, zlib and OpenCV all
release the GIL, so threads are enough; no processes, nothing to pickle.

One implementation for ``edgeseg predict`` and ``edgeseg bench --images`` (the deploy
bundle's run.py keeps a compact copy: it runs without edgeseg)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:  # the command line imports this module; threads are started only when asked for
    from concurrent.futures import Future, ThreadPoolExecutor

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
Output = TypeVar("Output")
Result = TypeVar("Result")

DEFAULT_WORKERS = 2
FRAMES_AHEAD_PER_WORKER = 2


def ordered_frames(items: Iterable[Item], prepare: Callable[[Item], Prepared], run: Callable[[Prepared], Output],
                   finish: Callable[[Item, Output], Result], workers: int = DEFAULT_WORKERS) -> Iterator[Result]:
    """``finish(item, run(prepare(item)))`` for every item, yielded in the order of ``items``.

    ``workers`` 0: each step on the calling thread, one item after the other. ``workers`` >= 1:
    ``prepare`` and ``finish`` run on that many threads and ``run`` (the model) on the calling
    thread, with at most ``FRAMES_AHEAD_PER_WORKER * workers`` items prepared ahead and as many
    finishing, so memory stays bounded however long ``items`` is.

    An exception from any step is raised at the item it belongs to, as the sequential loop
    would raise it: every earlier item's ``finish`` has completed by then, and no later item
    has been run through the model. (A later item's ``finish`` may already have completed
    when an earlier ``finish`` fails; writes are atomic, so no file is half-written.)
    """
    if workers < 0:
        raise ValueError("workers must be 0 (sequential) or more")
    if workers == 0:
        for item in items:
            yield finish(item, run(prepare(item)))
        return
    from concurrent.futures import ThreadPoolExecutor

    ahead = FRAMES_AHEAD_PER_WORKER * workers
    source = iter(items)
    prepared: deque[tuple[Item, Future]] = deque()
    finishing: deque[Future] = deque()

    def read_ahead(pool: ThreadPoolExecutor) -> None:
        while len(prepared) < ahead:
            item = next(source, _END)
            if item is _END:
                return
            prepared.append((item, pool.submit(prepare, item)))

    with ThreadPoolExecutor(workers, thread_name_prefix="edgeseg-frames") as pool:
        try:
            read_ahead(pool)
            while prepared:
                item, future = prepared.popleft()
                try:
                    model_input = future.result()
                    read_ahead(pool)
                    output = run(model_input)
                except BaseException:
                    while finishing:  # the earlier items complete (or fail) first, as they would in order
                        yield finishing.popleft().result()
                    raise
                finishing.append(pool.submit(finish, item, output))
                while finishing and (len(finishing) > ahead or finishing[0].done()):
                    yield finishing.popleft().result()
            while finishing:
                yield finishing.popleft().result()
        finally:
            for _, future in prepared:
                future.cancel()
            for future in finishing:
                future.cancel()


_END = object()
