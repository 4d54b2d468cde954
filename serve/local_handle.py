"""`LocalHandle`: an object in this process called as its Ray Serve deployment handle would be.

`ingress: colocated` (serve/deploy.py) puts the one candidate's `CandidateServer` in the ingress's
own replica; the ingress calls it through this, with the same code as a deployment handle:

    >>> h = LocalHandle(server, lambda: loop)                      # doctest: +SKIP
    >>> await h.complete.remote(payload)                           # doctest: +SKIP
    >>> # from a worker thread, the call runs on `loop`:
    >>> h.complete.remote(payload).result()                        # doctest: +SKIP
    >>> async for item in h.options(stream=True).stream.remote(request): ...             # doctest: +SKIP
"""
import asyncio
import inspect


class LocalHandle:
    """A candidate object in this process, called as its deployment handle would be (for `ingress:
    colocated`): `h.complete.remote(p)` is awaitable, and from a worker thread `.result()` runs it on
    the replica's event loop (`loop()`); `h.options(stream=True).stream.remote(r)` is the async
    generator itself. No Ray hop: the call is a method call."""

    def __init__(self, obj, loop):
        self._obj, self._loop = obj, loop

    def options(self, **_options) -> "LocalHandle":
        return self

    def __getattr__(self, name: str):
        return _LocalMethod(getattr(self._obj, name), self._loop)


class _LocalMethod:
    def __init__(self, fn, loop):
        self._fn, self._loop = fn, loop

    def remote(self, *args):
        if inspect.isasyncgenfunction(self._fn):
            return self._fn(*args)
        return _LocalCall(self._fn, args, self._loop)


class _LocalCall:
    def __init__(self, fn, args, loop):
        self._fn, self._args, self._loop = fn, args, loop

    async def _run(self):
        if inspect.iscoroutinefunction(self._fn):
            return await self._fn(*self._args)
        return await asyncio.to_thread(self._fn, *self._args)  # a blocking method, off the loop

    def __await__(self):
        return self._run().__await__()

    def result(self, timeout_s: float | None = None):
        return asyncio.run_coroutine_threadsafe(self._run(), self._loop()).result(timeout_s)
