"""Benchmark: the WhatsApp roles as real subprocesses on one SQLite file, each egress
worker sending to its own fake Graph API (tests/fake_graph.py, so every send says which
worker made it), measured from outside:
  failover_kill_s (median; _min_s, _max_s, _values_s): two `whatsapp-egress` workers
    (WHATSAPP_TRANSPORT=cloud); the owner streams --messages texts (the fakes answer after
    --graph-delay-ms, so the stream lasts), it is sent SIGKILL mid-stream, and the figure
    is the time from the kill until the standby's fake receives its first send. Each
    trial has a fresh database and fresh processes. How long a takeover waits depends on
    when the kill lands in the owner's renewal cycle (renewed every TTL/3, expires a TTL
    after the last renewal; the standby tries every 2 +/- 0.5 s), so trial i of n kills
    when (i + 0.5) / n of a renewal period has passed since the last renewal:
    kill_since_renewal_s says when each kill landed. Expected <= TTL + 3 s;
  duplicates_per_kill (list; _max): texts the two fakes received more than once, once
    every message is sent (a kill between Meta's accept and the mark re-sends that one
    message when its claim lock expires: 0 or 1 expected, at most the batch of 10);
    lost_per_kill: texts neither fake ever received (must be 0); all_sent_after_kill_s:
    from the kill until no message is queued or sending, which includes the dead owner's
    claimed batch waiting for WHATSAPP_CLAIM_LOCK_MS;
  failover_term_s (median; _min_s, _max_s, _values_s): the same with SIGTERM: from the
    signal until the standby's first send, messages still queued (the owner drains,
    gives back its batch and releases the lease). Expected <= 3 s. duplicates_per_term,
    lost_per_term (0 expected), term_exit_codes and term_exit_s (the owner's exit);
  sends_per_s: one worker, no Graph delay, --sends messages queued before it starts:
    the rate at the fake over the steady part (the first and last 10 % of sends left
    out), against max_mps (WHATSAPP_MAX_MPS): ratio = sends_per_s / max_mps, expected
    <= 1.0 and close to it. To say what bounds it: ceiling_sends_per_s (the same run at
    WHATSAPP_MAX_MPS=1000, the highest allowed), worker_cpu_cores (CPU seconds the worker
    used per second of the window), backend_ms_per_send (one claim of 10 and 10 marks on
    the embedded backend in this process, per message), graph_round_trip_ms (one
    CloudTransport send to the fake, in this process) and `bottleneck`;
  webhook_p50_ms / webhook_p99_ms / webhook_max_ms: one `whatsapp-ingress` worker, 200
    distinct signed deliveries (--deliveries) of 100 text messages each (unique provider
    ids) POSTed one after the other over a keep-alive connection; each 200 answer comes
    only after the backend stored the delivery. inbox_stored checks that all were kept.
The parameters and a `targets` object of booleans are included. Progress goes to stderr,
one JSON object to stdout (with "error" and exit status 1 if a wait timed out).

Usage (from the repository root, which holds the fake Graph API it imports; about 7-8
minutes, nearly all of it the 5 kill trials each waiting for the dead owner's claim lock
(60 s by default); run nothing else meanwhile, it needs both cores):
  PYTHONPATH=. .venv/bin/python benchmarks/whatsapp.py [--trials 5] [--lease-ttl-ms 15000]
      [--claim-lock-ms 60000] [--max-mps 80] [--messages 600] [--graph-delay-ms 20]
      [--sends 800] [--deliveries 200] [--messages-per-delivery 100] [--skip-failover]
      [--skip-throughput] [--skip-webhook] [--log-dir DIR]
"""

import argparse
import hashlib
import hmac
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import workers
from pydantic import SecretStr
from workers import BenchmarkError, Worker, seconds

from actors.whatsapp.lease import STANDBY_RETRY_S
from actors.whatsapp.sender import BATCH_SIZE
from actors.whatsapp.transport import CloudTransport
from agent_runtime.app.config import (
    DEFAULT_WHATSAPP_CLAIM_LOCK_MS,
    DEFAULT_WHATSAPP_LEASE_TTL_MS,
    DEFAULT_WHATSAPP_MAX_MPS,
)
from agent_runtime.app.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH
from agent_runtime.clock import monotonic_s, now_ms
from backend.local import LocalBackend
from tests.fake_graph import FakeGraph

T = TypeVar("T")

ACCOUNT = "acct"
RECIPIENT = "15550001"
APP_SECRET = "benchmark-app-secret"
VERIFY_TOKEN = "benchmark-verify-token"
ACCESS_TOKEN = "benchmark-access-token"
MAX_MPS_CAP = 1000
"""The highest WHATSAPP_MAX_MPS the settings accept: the ceiling run."""

POLL_S = 0.05
"""How often the conditions are read (the fakes' records, the outbox, a lease)."""

STEADY_TRIM = 0.1
"""The share of sends left out at each end of the throughput window."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """`workers.wait_until`, reading every POLL_S."""
    return workers.wait_until(predicate, timeout_s, what, POLL_S)


def log(message: str) -> None:
    print(f"whatsapp: {message}", file=sys.stderr, flush=True)


def base_env(db_path: Path, role: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_", "LOG_", "APP_", "WORKER_", "CONVEX_", "WHATSAPP_"))
        and k != "ENABLE_WHATSAPP"
    }
    env.update(
        LOCAL_DB_PATH=str(db_path),
        PORT="0",
        HOST="127.0.0.1",
        LOG_LEVEL="INFO",  # the HTTP port is logged at INFO
        LOG_FORMAT="json",
        AGENT_ROLE=role,
        WHATSAPP_ACCOUNT_ID=ACCOUNT,
    )
    return env


def egress_env(
    db_path: Path, graph: FakeGraph, args: argparse.Namespace, max_mps: int
) -> dict[str, str]:
    env = base_env(db_path, "whatsapp-egress")
    env.update(
        WHATSAPP_TRANSPORT="cloud",
        WHATSAPP_GRAPH_URL=graph.url,
        WHATSAPP_ACCESS_TOKEN=ACCESS_TOKEN,
        WHATSAPP_PHONE_NUMBER_ID="1234",
        WHATSAPP_LEASE_TTL_MS=str(args.lease_ttl_ms),
        WHATSAPP_CLAIM_LOCK_MS=str(args.claim_lock_ms),
        WHATSAPP_MAX_MPS=str(max_mps),
    )
    return env


def start_graph(delay_s: float = 0.0) -> FakeGraph:
    """A FakeGraph answering after `delay_s`."""
    graph = FakeGraph().start()
    graph.delay_s = delay_s
    return graph


def queue(backend: LocalBackend, count: int, prefix: str) -> list[str]:
    texts = [f"{prefix}{i}" for i in range(count)]
    for text in texts:
        backend.enqueue_outbound(ACCOUNT, RECIPIENT, text)
    return texts


def texts_of(graph: FakeGraph) -> list[str]:
    return [str(r.text) for r in graph.sent]


def summary(prefix: str, values: list[float]) -> dict[str, Any]:
    return {
        prefix + "_s": seconds(statistics.median(values)),
        prefix + "_min_s": seconds(min(values)),
        prefix + "_max_s": seconds(max(values)),
        prefix + "_values_s": [seconds(v) for v in values],
    }


# ---------------------------------------------------------------------------- failover


class Pair:
    """An owner and a standby on a fresh database, each with its own fake Graph API."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder = folder
        self.args = args
        self.backend = LocalBackend(folder / "wa.db")
        self.graphs: dict[str, FakeGraph] = {}
        self.workers: dict[str, Worker] = {}

    def start(self, name: str) -> Worker:
        graph = start_graph(self.args.graph_delay_ms / 1000)
        self.graphs[name] = graph
        env = egress_env(self.backend.path, graph, self.args, self.args.max_mps)
        self.workers[name] = Worker(name, env, self.folder)
        return self.workers[name]

    def holder(self) -> str | None:
        """The worker whose live lease the backend holds (owner ids are WORKER_ID/...)."""
        lease = self.backend.get_lease(ACCOUNT)
        if lease is None or lease.expires_at <= now_ms():
            return None
        return lease.owner_id.split("/")[0]

    def since_renewal_s(self) -> float:
        lease = self.backend.get_lease(ACCOUNT)
        if lease is None:
            raise BenchmarkError("no lease in the backend")
        return (now_ms() - (lease.expires_at - self.args.lease_ttl_ms)) / 1000

    def unsettled(self) -> int:
        """Messages still queued or being sent."""
        return sum(len(self.backend.list_outbox(ACCOUNT, s)) for s in ("queued", "sending"))

    def start_streaming(self) -> list[str]:
        """w1 owns the lease, w2 stands by, the queue filled, w1 mid-stream."""
        self.start("w1")
        wait_until(lambda: self.holder() == "w1", 15, "w1 to hold the lease")
        standby = self.start("w2")
        wait_until(lambda: standby.health()["lease"]["ownerId"], 15, "w2 to try the lease")
        texts = queue(self.backend, self.args.messages, "m")
        wait_until(lambda: len(self.graphs["w1"].sent) >= 20, 20, "w1 mid-stream")
        return texts

    def first_standby_send_s(self, signalled_s: float, timeout_s: float) -> float:
        graph = self.graphs["w2"]
        wait_until(lambda: graph.requests, timeout_s, "the standby's first send")
        return min(r.at_s for r in graph.requests) - signalled_s

    def outcome(self, texts: list[str], signalled_s: float) -> dict[str, Any]:
        """Once nothing is queued or sending: duplicates, lost, failed."""
        wait_until(
            lambda: not self.unsettled(),
            self.args.claim_lock_ms / 1000 + self.args.lease_ttl_ms / 1000 + 60,
            "every message to be sent",
        )
        settled_s = monotonic_s() - signalled_s
        sent = Counter(texts_of(self.graphs["w1"]) + texts_of(self.graphs["w2"]))
        return {
            "duplicates": sum(n - 1 for n in sent.values() if n > 1),
            "lost": sum(1 for t in texts if not sent[t]),
            "failed": len(self.backend.list_outbox(ACCOUNT, "failed")),
            "settled_s": settled_s,
        }

    def close(self, log_dir: Path | None, trial: str) -> None:
        for worker in self.workers.values():
            worker.stop()
        for graph in self.graphs.values():
            graph.stop()
        self.backend.close()
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            for worker in self.workers.values():
                shutil.copy(worker.log_path, log_dir / f"{trial}-{worker.name}.log")


def kill_trial(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """SIGKILL the owner mid-stream, at (index + 0.5) / trials of its renewal period."""
    period_s = args.lease_ttl_ms / 1000 / 3
    target_s = (index + 0.5) / args.trials * period_s
    with tempfile.TemporaryDirectory(prefix="wa-bench-kill-") as tmp:
        pair = Pair(Path(tmp), args)
        try:
            texts = pair.start_streaming()
            # At the target phase (within 0.3 s; the next cycle if this one is past it).
            wait_until(
                lambda: target_s <= pair.since_renewal_s() <= target_s + 0.3,
                2 * period_s + 5,
                "the kill's phase in the renewal cycle",
            )
            sent_before = len(pair.graphs["w1"].sent)
            if sent_before >= len(texts):
                raise BenchmarkError("the stream ended before the kill: raise --messages")
            pair.workers["w1"].proc.kill()
            killed_s = monotonic_s()
            since_s = pair.since_renewal_s()
            failover_s = pair.first_standby_send_s(killed_s, args.lease_ttl_ms / 1000 + 10)
            result = pair.outcome(texts, killed_s)
        finally:
            pair.close(args.log_dir, f"kill{index}")
    log(
        f"kill {index + 1}: {since_s:.2f} s after a renewal, {sent_before} sent; standby sends"
        f" after {failover_s:.2f} s; duplicates {result['duplicates']}, lost {result['lost']},"
        f" all sent after {result['settled_s']:.1f} s"
    )
    return {"failover_s": failover_s, "since_renewal_s": since_s, **result}


def term_trial(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """SIGTERM the owner mid-stream, (index + 0.5) / trials of the standby's retry period
    after the stream is under way (the standby's tries are not seen from outside; this
    spreads the signals over its cycle instead of landing at one phase of it each time)."""
    with tempfile.TemporaryDirectory(prefix="wa-bench-term-") as tmp:
        pair = Pair(Path(tmp), args)
        try:
            texts = pair.start_streaming()
            at_s = monotonic_s() + (index + 0.5) / args.trials * STANDBY_RETRY_S
            wait_until(lambda: monotonic_s() >= at_s, STANDBY_RETRY_S + 1, "the signal's time")
            owner = pair.workers["w1"]
            if len(pair.graphs["w1"].sent) >= len(texts):
                raise BenchmarkError("the stream ended before the SIGTERM: raise --messages")
            owner.proc.send_signal(signal.SIGTERM)
            signalled_s = monotonic_s()
            exited: list[float] = []

            def standby_sent() -> bool:
                if not exited and owner.proc.poll() is not None:
                    exited.append(monotonic_s() - signalled_s)
                return bool(pair.graphs["w2"].requests)

            wait_until(standby_sent, 15, "the standby's first send after SIGTERM")
            failover_s = min(r.at_s for r in pair.graphs["w2"].requests) - signalled_s
            try:
                exit_code = owner.proc.wait(30)
            except subprocess.TimeoutExpired:
                raise BenchmarkError("the owner did not exit within 30 s of SIGTERM") from None
            if not exited:
                exited.append(monotonic_s() - signalled_s)
            result = pair.outcome(texts, signalled_s)
        finally:
            pair.close(args.log_dir, f"term{index}")
    log(
        f"term {index + 1}: standby sends after {failover_s:.2f} s; owner exit {exit_code}"
        f" after {exited[0]:.2f} s; duplicates {result['duplicates']}, lost {result['lost']}"
    )
    return {"failover_s": failover_s, "exit_code": exit_code, "exit_s": exited[0], **result}


def failover_phase(args: argparse.Namespace, result: dict[str, Any]) -> None:
    kills = [kill_trial(args, i) for i in range(args.trials)]
    result.update(summary("failover_kill", [k["failover_s"] for k in kills]))
    result.update(
        kill_since_renewal_s=[seconds(k["since_renewal_s"]) for k in kills],
        duplicates_per_kill=[k["duplicates"] for k in kills],
        duplicates_per_kill_max=max(k["duplicates"] for k in kills),
        lost_per_kill=[k["lost"] for k in kills],
        failed_per_kill=[k["failed"] for k in kills],
        all_sent_after_kill_s=[seconds(k["settled_s"]) for k in kills],
    )
    terms = [term_trial(args, i) for i in range(args.trials)]
    result.update(summary("failover_term", [t["failover_s"] for t in terms]))
    result.update(
        duplicates_per_term=[t["duplicates"] for t in terms],
        lost_per_term=[t["lost"] for t in terms],
        failed_per_term=[t["failed"] for t in terms],
        term_exit_codes=[t["exit_code"] for t in terms],
        term_exit_s=[seconds(t["exit_s"]) for t in terms],
    )
    result["lost"] = sum(k["lost"] for k in kills) + sum(t["lost"] for t in terms)


# ---------------------------------------------------------------------------- throughput


def steady_rate(at_s: list[float]) -> float:
    """Sends per second between the first and last STEADY_TRIM of the sends."""
    ordered = sorted(at_s)
    lo = int(len(ordered) * STEADY_TRIM)
    hi = len(ordered) - 1 - lo
    return (hi - lo) / (ordered[hi] - ordered[lo])


def throughput_run(args: argparse.Namespace, max_mps: int) -> dict[str, float]:
    """One worker, no Graph delay, `--sends` queued before it starts."""
    with tempfile.TemporaryDirectory(prefix="wa-bench-rate-") as tmp:
        folder = Path(tmp)
        backend = LocalBackend(folder / "wa.db")
        graph = start_graph()
        worker: Worker | None = None
        try:
            queue(backend, args.sends, "r")
            worker = Worker(
                f"rate{max_mps}", egress_env(backend.path, graph, args, max_mps), folder
            )
            lo = int(args.sends * STEADY_TRIM)
            wait_until(lambda: len(graph.requests) >= lo, 60, "the first sends")
            cpu_before, at_before = worker.cpu_s(), monotonic_s()
            wait_until(
                lambda: len(graph.requests) >= args.sends - lo,
                args.sends / min(max_mps, 50) + 60,
                f"{args.sends} sends",
            )
            cores = (worker.cpu_s() - cpu_before) / (monotonic_s() - at_before)
            wait_until(lambda: len(graph.requests) >= args.sends, 30, "the last sends")
            sent = graph.sent
            if len(sent) != args.sends or len({r.text for r in sent}) != args.sends:
                raise BenchmarkError(f"{len(sent)} sends at the fake, not {args.sends} distinct")
            rate = steady_rate([r.at_s for r in sent])
        finally:
            if worker is not None:
                worker.stop()
            graph.stop()
            backend.close()
    log(f"WHATSAPP_MAX_MPS={max_mps}: {rate:.1f} sends/s, worker at {cores:.2f} cores")
    return {"sends_per_s": rate, "cores": cores}


def backend_ms_per_send(count: int = 400) -> float:
    """One claim of BATCH_SIZE and a mark per message on the embedded backend, per message
    (what the sender asks of the backend for each send), timed in this process."""
    with tempfile.TemporaryDirectory(prefix="wa-bench-backend-") as tmp:
        backend = LocalBackend(Path(tmp) / "wa.db")
        try:
            queue(backend, count, "b")
            lease = backend.acquire_lease(ACCOUNT, "bench", 60_000)
            started_s = monotonic_s()
            done = 0
            while done < count:
                claimed = backend.claim_outbound(
                    ACCOUNT, "bench", lease.epoch, limit=BATCH_SIZE, lock_ms=60_000, max_attempts=5
                )
                for message in claimed:
                    backend.mark_sent(message.id, message.claim_token, lease.epoch, f"w{done}")
                    done += 1
            return (monotonic_s() - started_s) * 1000 / count
        finally:
            backend.close()


def graph_round_trip_ms(args: argparse.Namespace, count: int = 200) -> float:
    """Median of one CloudTransport send to the fake (no delay), timed in this process."""
    graph = start_graph()
    transport = CloudTransport(graph.url, "v23.0", "1234", SecretStr(ACCESS_TOKEN), 10)
    try:
        times = []
        for i in range(count):
            started_s = monotonic_s()
            sent = transport.send_text(RECIPIENT, f"rtt{i}")
            times.append((monotonic_s() - started_s) * 1000)
            if sent.kind != "sent":
                raise BenchmarkError(f"the fake refused a send: {sent.reason}")
        return statistics.median(times[10:])
    finally:
        transport.close()
        graph.stop()


def bottleneck(
    ratio: float, max_mps: int, ceiling: dict[str, float], costs_ms: dict[str, float]
) -> str:
    """What bounds the rate. The sender sends one message at a time, so unthrottled each
    send costs 1000 / ceiling ms: a Graph round trip, the backend's share, and the rest."""
    if ratio >= 0.95:
        return "none: WHATSAPP_MAX_MPS sets the rate"
    if ceiling["sends_per_s"] >= 1.2 * max_mps:
        return "the limiter: each 1/max_mps wait ends late (timer lateness adds to it)"
    if ceiling["cores"] >= 0.9:
        return f"machine: the worker uses {ceiling['cores']:.2f} cores unthrottled"
    per_send_ms = 1000 / ceiling["sends_per_s"]
    parts = {**costs_ms, "the rest (worker, scheduling)": per_send_ms - sum(costs_ms.values())}
    name, cost = max(parts.items(), key=lambda item: item[1])
    return f"{name}: {cost:.1f} of the {per_send_ms:.1f} ms each sequential send takes"


def throughput_phase(args: argparse.Namespace, result: dict[str, Any]) -> None:
    throttled = throughput_run(args, args.max_mps)
    ceiling = throughput_run(args, MAX_MPS_CAP)
    backend_ms = backend_ms_per_send()
    rtt_ms = graph_round_trip_ms(args)
    ratio = throttled["sends_per_s"] / args.max_mps
    costs_ms = {"the Graph round trip": rtt_ms, "the backend": backend_ms}
    limit = bottleneck(ratio, args.max_mps, ceiling, costs_ms)
    result.update(
        sends_per_s=round(throttled["sends_per_s"], 1),
        max_mps=args.max_mps,
        ratio=round(ratio, 3),
        worker_cpu_cores=round(throttled["cores"], 2),
        ceiling_sends_per_s=round(ceiling["sends_per_s"], 1),
        ceiling_worker_cpu_cores=round(ceiling["cores"], 2),
        backend_ms_per_send=round(backend_ms, 3),
        graph_round_trip_ms=round(rtt_ms, 2),
        bottleneck=limit,
    )


# ---------------------------------------------------------------------------- webhook


def delivery(index: int, count: int) -> bytes:
    """A WhatsApp Business Account delivery of `count` text messages, unique ids."""
    messages = [
        {
            "from": f"1555{index:04d}{m:03d}",
            "id": f"wamid.bench.{index}.{m}",
            "timestamp": "1700000000",
            "type": "text",
            "text": {"body": f"hello {index}-{m}"},
        }
        for m in range(count)
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1234"},
        "contacts": [{"profile": {"name": "bench"}, "wa_id": m["from"]} for m in messages],
        "messages": messages,
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(payload).encode()


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {SIGNATURE_HEADER: f"sha256={digest}", "Content-Type": "application/json"}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def webhook_phase(args: argparse.Namespace, result: dict[str, Any]) -> None:
    per = args.messages_per_delivery
    bodies = [delivery(i, per) for i in range(args.deliveries)]
    warmup = delivery(args.deliveries, 1)
    with tempfile.TemporaryDirectory(prefix="wa-bench-webhook-") as tmp:
        folder = Path(tmp)
        backend = LocalBackend(folder / "wa.db")
        env = base_env(backend.path, "whatsapp-ingress")
        env.update(WHATSAPP_APP_SECRET=APP_SECRET, WHATSAPP_VERIFY_TOKEN=VERIFY_TOKEN)
        worker: Worker | None = None
        try:
            worker = Worker("ingress", env, folder)
            client = worker.client
            assert client is not None
            params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}
            handshake = client.get(WEBHOOK_PATH, params={**params, "hub.challenge": "42"})
            if handshake.status_code != 200 or handshake.text != "42":
                raise BenchmarkError(f"handshake answered {handshake.status_code}")
            client.post(WEBHOOK_PATH, content=warmup, headers=signed(warmup)).raise_for_status()
            times: list[float] = []
            for body in bodies:
                headers = signed(body)
                started_s = monotonic_s()
                response = client.post(WEBHOOK_PATH, content=body, headers=headers)
                times.append((monotonic_s() - started_s) * 1000)
                response.raise_for_status()
                answer = response.json()
                if answer != {"messages": per, "statuses": 0, "duplicates": 0}:
                    raise BenchmarkError(f"a delivery was answered {answer}")
            stored = len(backend.list_inbox(ACCOUNT))
        finally:
            if worker is not None:
                worker.stop()
                if args.log_dir is not None:
                    args.log_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(worker.log_path, args.log_dir / "ingress.log")
            backend.close()
    ordered = sorted(times)
    log(f"webhook p50 {statistics.median(ordered):.1f} ms, p99 {percentile(ordered, 0.99):.1f} ms")
    result.update(
        webhook_deliveries=args.deliveries,
        webhook_messages_per_delivery=per,
        webhook_body_bytes=len(bodies[0]),
        webhook_p50_ms=round(statistics.median(ordered), 2),
        webhook_p99_ms=round(percentile(ordered, 0.99), 2),
        webhook_max_ms=round(ordered[-1], 2),
        webhook_messages_per_s=round(args.deliveries * per / (sum(times) / 1000)),
        inbox_stored=stored - 1,  # the warm-up's one message
    )


# ---------------------------------------------------------------------------- main


def targets(result: dict[str, Any], args: argparse.Namespace) -> dict[str, bool | None]:
    def check(key: str, ok: Callable[[Any], bool]) -> bool | None:
        return ok(result[key]) if key in result else None

    ttl_s = args.lease_ttl_ms / 1000
    stored = args.deliveries * args.messages_per_delivery
    return {
        "failover_kill_max_s": check("failover_kill_max_s", lambda v: v <= ttl_s + 3),
        "failover_term_max_s": check("failover_term_max_s", lambda v: v <= 3),
        "duplicates_per_kill_max": check("duplicates_per_kill_max", lambda v: v <= BATCH_SIZE),
        "lost": check("lost", lambda v: v == 0),
        "ratio": check("ratio", lambda v: v <= 1.0),
        "inbox_stored": check("inbox_stored", lambda v: v == stored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lease-ttl-ms", type=int, default=DEFAULT_WHATSAPP_LEASE_TTL_MS)
    parser.add_argument("--claim-lock-ms", type=int, default=DEFAULT_WHATSAPP_CLAIM_LOCK_MS)
    parser.add_argument("--max-mps", type=int, default=DEFAULT_WHATSAPP_MAX_MPS)
    parser.add_argument("--messages", type=int, default=600, help="queued per failover trial")
    parser.add_argument("--graph-delay-ms", type=int, default=20, help="failover fakes' delay")
    parser.add_argument("--sends", type=int, default=800, help="queued for sends_per_s")
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--messages-per-delivery", type=int, default=100)
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-webhook", action="store_true")
    parser.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    args = parser.parse_args()

    result: dict[str, Any] = {
        "trials": None if args.skip_failover else args.trials,
        "lease_ttl_ms": args.lease_ttl_ms,
        "claim_lock_ms": args.claim_lock_ms,
        "messages": args.messages,
        "graph_delay_ms": args.graph_delay_ms,
        "sends": None if args.skip_throughput else args.sends,
    }
    status = 0
    try:
        if not args.skip_failover:
            failover_phase(args, result)
        if not args.skip_throughput:
            throughput_phase(args, result)
        if not args.skip_webhook:
            webhook_phase(args, result)
    except (BenchmarkError, httpx.HTTPError, OSError, subprocess.TimeoutExpired) as error:
        result["error"] = f"{type(error).__name__}: {error}"
        log(result["error"])
        status = 1
    result["targets"] = targets(result, args)
    print(json.dumps(result))
    sys.exit(status)


if __name__ == "__main__":
    main()
