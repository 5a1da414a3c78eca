"""Micro-batching: single images from concurrent requests share one model call.

No timer: while the model runs on one batch, new images queue up, and the next call takes all of
them (up to max_batch). One client alone waits for nothing; sixteen fill batches by themselves.
The model runs in a worker thread, so the event loop keeps accepting and decoding meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np


class MicroBatcher:
    """`await batcher(pixels)`: one (H, W, 3) uint8 image -> its row of probabilities."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32):
        self.predict = predict  # (N, H, W, 3) uint8 -> (N, classes), called in a worker thread
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self.batches = 0  # model calls made, and images they took: for the logs and the tests
        self.images = 0
        self._task: asyncio.Task | None = None

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((pixels, future))
        return await future

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name="imgclass-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _serve(self) -> None:
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            items = [(pixels, f) for pixels, f in items if not f.done()]  # clients gone
            if not items:
                continue
            try:
                rows = await asyncio.to_thread(self.predict, np.stack([p for p, _ in items]))
            except Exception as err:  # each waiting request fails, the service goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches += 1
            self.images += len(items)
            for (_, future), row in zip(items, rows):
                if not future.done():
                    future.set_result(row)
