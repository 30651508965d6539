"""The engine's thread: requests from the HTTP layer join the decode engine's running batch, and their outputs go back.

`Worker` runs the engine on a thread of its own, so the HTTP layer (an asyncio event loop) never blocks it and it
never waits on a client: a request joins the running batch at the next step and leaves it when it ends, is
cancelled, or its client goes away. Requests beyond the engine's slots wait in a queue; beyond `max_queue` they get
HTTP 429. Nothing a client sends stops the loop or the other requests.
"""

import asyncio
import collections
import threading

from gpt2tf.errors import GPT2TFError, first_line
from gpt2tf.score import score_alternatives
from gpt2tf.serve.http import ApiError
from gpt2tf.settings import MAX_LOGPROBS

RETRY_AFTER_SECONDS = 1  # what a 429 asks a client to wait: a slot frees as soon as any request ends


class Job:
    """One HTTP request's engine requests (its choices), and the queue their outputs come back on."""

    def __init__(self, requests, loop, *, score_prompts=False, choices_per_request=1):
        self.requests, self.loop, self.score_prompts = requests, loop, score_prompts
        self.per_request = choices_per_request  # a beam search's request gives its n best as n choices
        self.choices = len(requests) * choices_per_request
        self.queue = asyncio.Queue()
        self.cancelled = False

    def put(self, item):
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed (the server is stopping): nobody is listening
            self.cancelled = True


class Worker:
    """Runs the engine on a thread of its own. `submit` queues a job's requests, which join the batch as slots free
    up; their outputs go back as `(choice, Output)` items on the job's queue, a failure as `(choice, ApiError)`,
    and `(None, prompt log-probabilities)` first for a job that asked for them."""

    def __init__(self, engine, *, max_queue):
        self.engine, self.max_queue = engine, max_queue
        self._waiting = collections.deque()  # (job, choice, Request) that have no slot yet
        self._cancelled = []
        self._owner = {}  # rid -> (job, choice)
        self._wake = threading.Condition()
        self.decoding = 0
        self._thread = threading.Thread(target=self._run, name="gpt2tf-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self):
        return len(self._waiting)

    def submit(self, job):
        with self._wake:
            if len(self._waiting) + len(job.requests) > self.max_queue + self.engine.free_slots:
                raise ApiError(
                    429,
                    f"the server is busy: {len(self._waiting)} requests are waiting for a slot; retry later",
                    type="server_busy",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self._waiting.extend((job, choice, request) for choice, request in enumerate(job.requests))
            self._wake.notify()

    def cancel(self, job):
        with self._wake:
            job.cancelled = True
            self._cancelled.append(job)
            self._wake.notify()

    def _run(self):
        engine = self.engine
        while True:
            with self._wake:
                while not self._waiting and not self._cancelled and not engine.active:
                    self._wake.wait()
                cancelled, self._cancelled = self._cancelled, []
                self._waiting = collections.deque(w for w in self._waiting if not w[0].cancelled)
                joining, free = [], engine.free_slots
                while self._waiting and self._waiting[0][2].rows <= free:  # a beam request needs num_beams rows
                    joining.append(self._waiting.popleft())
                    free -= joining[-1][2].rows
            for job in cancelled:
                for rid, (owner, _) in list(self._owner.items()):
                    if owner is job:
                        engine.cancel(rid)
                        del self._owner[rid]
            for job, choice, request in joining:
                self._join(job, choice, request)
            try:
                # Several steps per call when nobody can join (see Engine.auto_steps): one while a prompt is in.
                outputs = engine.step(None, queued=len(self._waiting))
            except Exception as err:  # a failed step fails its requests, never the server
                self._fail_all(err)
                continue
            for output in outputs:
                job, choice = self._owner[output.rid]
                if output.beams is None:
                    job.put((choice, output))
                else:  # a beam search's hypotheses: its request's choices, best first
                    for j, (ids, _, finished) in enumerate(output.beams):
                        job.put((choice * job.per_request + j, type(output)(output.rid, ids, finished)))
                if output.finished:
                    del self._owner[output.rid]
            self.decoding = engine.active

    def _join(self, job, choice, request):
        try:
            if job.score_prompts and choice == 0:
                job.put((None, self._prompt_logprobs(job)))
            self._owner[self.engine.add(request)] = (job, choice)
        except GPT2TFError as err:
            job.put((choice, ApiError(400, str(err))))
        except Exception as err:  # this request fails, the others go on
            job.put((choice, ApiError(500, f"the request failed: {err}", type="server_error")))

    def _prompt_logprobs(self, job):
        """Each prompt token's log-probability given the ones before it, and its n most likely, per prompt (through
        the one scoring path, a prompt at a time, eagerly: on the engine's thread, a compilation would stall every
        running request)."""
        scored = {}
        for request in job.requests:
            if request.prompt in scored:
                continue
            n, entries = request.logprobs, [(None, None)]
            if len(request.prompt) > 1:
                ((log_p, top_values, top_ids),) = score_alternatives(
                    self.engine.model,
                    [(list(request.prompt), 0)],
                    top=MAX_LOGPROBS,
                    max_rows=1,
                    compiled=False,
                )
                entries += [
                    (float(c), dict(zip(map(int, ids[:n]), map(float, values[:n]))))
                    for c, ids, values in zip(log_p, top_ids, top_values)
                ]
            scored[request.prompt] = entries
        return scored

    def _fail_all(self, err):
        error = ApiError(500, f"decoding failed: {first_line(err)}", type="server_error")
        for rid, (job, choice) in list(self._owner.items()):
            job.put((choice, error))
            self.engine.cancel(rid)
        self._owner.clear()


async def collect(request, worker, job, choices):
    """Wait for every choice of `job` (cancelling it if the client goes away); the prompt scores, if any."""
    prompt_scores, remaining = None, set(range(job.choices))
    while remaining:
        try:
            choice, item = await asyncio.wait_for(job.queue.get(), timeout=0.2)
        except asyncio.TimeoutError:
            if await request.is_disconnected():  # the client is gone: free its slots
                worker.cancel(job)
                raise ApiError(499, "the client went away") from None
            continue
        if isinstance(item, ApiError):
            worker.cancel(job)
            raise item
        if choice is None:
            prompt_scores = item
            continue
        choices[choice].add(item)
        if item.finished:
            remaining.discard(choice)
    return prompt_scores
