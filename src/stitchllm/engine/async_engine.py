"""AsyncEngine: drives LLMEngine on one background thread and streams each request's outputs to asyncio."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable

from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.engine.request import RequestOutput
from stitchllm.sampling import SamplingParams


class AsyncEngine:
    """Thread-safe front of the engine: add/abort from any coroutine; only the engine thread touches the engine."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending_adds: list[tuple] = []
        self._pending_aborts: list[str] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @classmethod
    def build(cls, factory: Callable[[], LLMEngine]) -> "AsyncEngine":
        """Build the engine on a new thread and run it there from then on (a server's way to start).

        Why: every thread that runs a parallel torch op keeps a team of OpenMP workers, and once a process holds
        more OpenMP threads than cores, libgomp's workers stop spinning between parallel regions and sleep
        instead. Loading and warming up the engine on the main thread, then stepping it on this one, did that on
        2 cores: 127 output tok/s at 32 requests in flight against 172 with every tensor op on one thread.
        Raises whatever building raised."""
        built: dict = {}
        ready = threading.Event()

        def main() -> None:
            try:
                built["engine"] = cls(factory())
            except BaseException as exc:  # handed to the caller below
                built["error"] = exc
                return
            finally:
                ready.set()
            built["engine"]._loop()

        thread = threading.Thread(target=main, name="stitchllm-engine", daemon=True)
        thread.start()
        ready.wait()
        if "error" in built:
            raise built["error"]
        built["engine"]._thread = thread
        return built["engine"]

    def start(self) -> None:
        """Run the engine loop on its own thread (already running for an engine made by `build`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="stitchllm-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking steps once in-flight requests finish (or `timeout` passes), then abort what is left."""
        if self._thread is None:
            return
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, route: str | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs step by step; leaving the iteration early aborts the request."""
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self.engine.validate(prompt_ids, route)  # raise bad input here, in the caller, not on the engine thread
        with self._lock:
            self._streams[request_id] = (asyncio.get_running_loop(), queue)
            self._pending_adds.append((request_id, prompt_ids, params, route))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
                if not finished:
                    self._pending_aborts.append(request_id)
            self._wake.set()

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, queue = stream
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._lock:
                adds, self._pending_adds = self._pending_adds, []
                aborts, self._pending_aborts = self._pending_aborts, []
            for request_id, prompt_ids, params, route in adds:
                engine.add_request(request_id, prompt_ids, params, route)
            for request_id in aborts:
                engine.abort(request_id)
            if not engine.has_unfinished():
                if self._stop:
                    return
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except BaseException as exc:  # never let one bad step kill the server silently
                self.error = exc
                with self._lock:
                    for request_id in list(self._streams):
                        self._deliver(request_id, RuntimeError(f"engine step failed: {exc}"))
                        engine.abort(request_id)
                continue
            with self._lock:
                for out in outputs:
                    self._deliver(out.request_id, out)
