"""Locks per dataset, kept in FiftyOne's MongoDB, so that two scans never write the same samples
at once (on one machine or many sharing one database), and two loads of the same source into one
dataset never add its files twice.

A lock is a document in the collection ``audit_locks``: the dataset, the kind (``scan`` or
``ingest``), the shard (I, N), and the holder's host, pid, process start time and a heartbeat the
holder refreshes every ``HEARTBEAT_SECONDS`` (times are the database server's clock, so machines
need not agree). Two scans of a dataset conflict unless both are different shards of the same N;
two ingests always do (the second waits, see ``wait``). A lock is stale, and is taken over, when
its holder is gone: same host and the pid is dead (or is another process now), or no heartbeat
for ``settings.LOCK_STALE_SECONDS`` (a holder on another machine that died).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from pymongo.errors import DuplicateKeyError

from audit import settings
from audit.store import db

COLLECTION = "audit_locks"
HEARTBEAT_SECONDS = 20.0


class LockError(db.DatasetError):
    """Another scan holds the dataset, or this scan lost its lock; the message is one line."""


def _collection():
    db.ensure_database()
    import fiftyone.core.odm.database as database

    return database.get_db_conn()[COLLECTION]


def _server_now(collection) -> datetime:
    """The database server's clock (UTC, naive), the one every holder's heartbeat is read against."""
    try:
        reply = collection.database.command("hello")
    except Exception:  # MongoDB before 4.4.2
        reply = collection.database.command("isMaster")
    return reply["localTime"].replace(tzinfo=None)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown;
    a pid reused by another process has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has exited
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    if os.path.isdir("/proc"):
        now = _process_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conflicts(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Two holders clash unless they are different shards of the same split."""
    return not (a[1] == b[1] and a[1] > 1 and a[0] != b[0])


def _stale(doc: dict, now: datetime, stale_after: float) -> bool:
    if doc.get("host") == socket.gethostname() and not _pid_alive(int(doc.get("pid", -1)), doc.get("pid_start")):
        return True
    heartbeat = doc.get("heartbeat")
    return heartbeat is None or now - heartbeat.replace(tzinfo=None) > timedelta(seconds=stale_after)


def _describe(doc: dict, now: datetime) -> str:
    seen = doc.get("heartbeat")
    ago = f", last seen {int((now - seen.replace(tzinfo=None)).total_seconds())} s ago" if seen else ""
    shard = doc.get("shard") or (1, 1)
    part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    return f"pid {doc.get('pid')} on {doc.get('host')}{part}{ago}"


class ScanLock:
    """Held while a scan writes to a dataset (``kind="scan"``) or a source is loaded into it
    (``kind="ingest"``); use as a context manager or call ``acquire`` and ``release``.

    ``acquire`` raises `LockError` when a live holder conflicts, or, with ``wait``, waits for it
    (calling ``on_wait(message)`` once). ``lost`` turns true when the heartbeat finds the lock
    taken over (this process stalled for longer than the stale limit): the holder must stop."""

    def __init__(self, dataset_name: str, shard: tuple[int, int] = (1, 1), stale_after: float | None = None,
                 heartbeat: float = HEARTBEAT_SECONDS, kind: str = "scan", wait: bool = False,
                 on_wait: Callable[[str], None] | None = None, doing: str | None = None):
        self.dataset_name = dataset_name
        self.kind = kind
        self.doing = doing or ("scanned" if kind == "scan" else "loaded")  # what others are told
        self.shard = (int(shard[0]), int(shard[1]))
        self.stale_after = settings.LOCK_STALE_SECONDS if stale_after is None else stale_after
        self.interval = heartbeat
        self.wait, self.on_wait = wait, on_wait
        self.id = f"{dataset_name}|{self.shard[0]}/{self.shard[1]}" + ("" if kind == "scan" else f"|{kind}")
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._collection = None

    def acquire(self) -> "ScanLock":
        collection = self._collection = _collection()
        attempts, told = 0, False
        while True:
            try:
                self._clear_or_refuse(collection, exclude=None)
            except LockError as refusal:
                if not self.wait:
                    raise
                if self.on_wait and not told:
                    self.on_wait(str(refusal))
                    told = True
                time.sleep(1.0)
                continue
            now = _server_now(collection)
            try:
                collection.insert_one({
                    "_id": self.id, "dataset": self.dataset_name, "kind": self.kind, "shard": list(self.shard),
                    "doing": self.doing, "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                    "pid_start": _process_start(os.getpid()), "heartbeat": now, "started": now,
                })
            except DuplicateKeyError:  # another process took it between our look and our insert
                attempts += 1
                if attempts >= 5 and not self.wait:
                    raise LockError(f"could not lock dataset '{self.dataset_name}': other scans keep starting") from None
                continue
            try:  # a conflicting shard layout inserted at the same moment: both back off, neither writes
                self._clear_or_refuse(collection, exclude=self.id)
            except LockError:
                collection.delete_one({"_id": self.id, "token": self.token})
                if not self.wait:
                    raise
                time.sleep(1.0)
                continue
            self._thread = threading.Thread(target=self._beat, name="audit-lock", daemon=True)
            self._thread.start()
            return self

    def _clear_or_refuse(self, collection, exclude: str | None) -> None:
        now = _server_now(collection)
        for doc in collection.find({"dataset": self.dataset_name, "kind": self.kind}):
            if doc["_id"] == exclude or not _conflicts(tuple(doc.get("shard") or (1, 1)), self.shard):
                continue
            if _stale(doc, now, self.stale_after):
                collection.delete_one({"_id": doc["_id"], "token": doc.get("token")})
                continue
            raise LockError(f"dataset '{self.dataset_name}' is being {doc.get('doing', 'scanned')} by {_describe(doc, now)}; "
                            "wait for it to finish (a lock whose process died is taken over automatically)")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                result = self._collection.update_one({"_id": self.id, "token": self.token},
                                                     [{"$set": {"heartbeat": "$$NOW"}}])
                if result.matched_count == 0:
                    self.lost = True
                    return
            except Exception:  # a passing database hiccup: try again at the next beat
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._collection is not None:
            try:
                self._collection.delete_one({"_id": self.id, "token": self.token})
            except Exception:  # the database went away: the lock goes stale on its own
                pass

    def __enter__(self) -> "ScanLock":
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def held_locks(dataset_name: str | None = None, kind: str = "scan") -> list[dict]:
    """The lock documents of a kind (all datasets, or one), for inspection."""
    query = {"kind": kind} if dataset_name is None else {"dataset": dataset_name, "kind": kind}
    return list(_collection().find(query))
