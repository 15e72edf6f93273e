"""One run per destination: a blob lease on `state/<destination>/lock`, renewed while the run lives.

A dead run's lease simply expires (60 s). A run that finds its lease lost (another run took the lock after
it expired) records nothing more, and before every request that changes SendGrid it renews the lease and
refuses a request that could outlive it (guard_change).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobLeaseClient, ContainerClient

from shared.config.time_budgets import LEASE_CALL_ATTEMPTS, LEASE_CALL_OPTIONS, LEASE_MARGIN_SECONDS

log = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 5.0
# A lease renewed this recently (share of its duration) has far more left than a request to SendGrid may take
# (CHANGE_SHARE_OF_LEASE + LEASE_MARGIN_SECONDS): renewing it again would only add a request.
RENEWED_RECENTLY_SHARE = 0.05
LEASE_SECONDS = 60  # Blob Storage allows 15-60 s (or infinite, which a dead run would never give back)


class DestinationBusy(Exception):
    """Another run holds this destination's lock."""


class LockLost(Exception):
    """This run's lease on the destination lock is gone: it expired and another run may hold it now."""


class LeaseTooShort(LockLost):
    """The lease is held, but renewing it took so long that a request that changes SendGrid could outlive it."""


def _clock() -> float:
    """Seconds that keep counting while the process is paused or the machine sleeps (CLOCK_BOOTTIME on
    Linux): a lease runs out on storage's clock whatever happens to ours."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class DestinationLock:
    """The lease of one destination's lock blob, with the thread that renews it."""

    def __init__(self, container: ContainerClient, destination: str, lease_seconds: int) -> None:
        self._container = container
        self.destination = destination
        self.lease_seconds = lease_seconds
        self._prefix = f"state/{destination}/"
        self._lease: BlobLeaseClient | None = None
        self._lease_guard = threading.Lock()  # the renewer thread and the run both renew
        self._lost = False
        self._renewed_at = 0.0  # when the last successful acquire or renewal was sent (_clock)
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def acquire(self, wait: float = 0.0) -> None:
        """Take the destination's lock; wait up to `wait` seconds for a running export to finish first.

        Segment files are whole snapshots, so a trigger that arrives during a run of the same destination
        is worth waiting for (its file is newer), but not for ever: DestinationBusy after `wait`.
        """
        lock = self._container.get_blob_client(self._prefix + "lock")
        deadline = time.monotonic() + wait
        created = False
        while True:
            try:
                started = _clock()
                self._lease = lock.acquire_lease(lease_duration=self.lease_seconds, **LEASE_CALL_OPTIONS)
                self._renewed_at = started
                break
            except ResourceNotFoundError:  # the destination's first run: its container or lock blob is new
                if created:
                    raise
                self._create_lock_blob()
                created = True
                continue
            except HttpResponseError as exc:
                if exc.status_code != 409:
                    raise
                if time.monotonic() >= deadline:
                    raise DestinationBusy(
                        f"another run of destination {self.destination} is in progress") from None
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        self._lost = False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.destination}", daemon=True)
        self._renewer.start()

    def _create_lock_blob(self) -> None:
        """Only when the lease found no blob: two requests fewer on every other run."""
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()
        with contextlib.suppress(ResourceExistsError):
            self._container.get_blob_client(self._prefix + "lock").upload_blob(b"", overwrite=False)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.ensure_lock()
            except LockLost:
                log.error("destination %s: this run lost its lock; it records no more state", self.destination)
                return
            except AzureError:  # storage unreachable too, not only an error answer
                log.warning("could not renew the lock of destination %s", self.destination)

    def ensure_lock(self) -> None:
        """Renew the lease now; LockLost if it is gone (no-op when this state was never locked).

        A lease renewed within the last RENEWED_RECENTLY_SHARE of its duration (3 s of 60) is not renewed
        again: it cannot have expired, and an unexpired lease can only be broken by hand. A run writes its
        state in a burst of requests (snapshot blocks, checkpoint, report, source record); renewing before
        each one added 14 requests to the 49 of a 100,000-row refresh.

        Each renewal call is short (LEASE_CALL_OPTIONS: no SDK retry, seconds-long timeouts) and tried twice,
        so a slow renewal cannot outlive the lease it renews.
        """
        with self._lease_guard:
            if self._lease is None:
                return
            if self._lost:
                raise LockLost(f"the lock of destination {self.destination} was lost")
            if _clock() - self._renewed_at < self.lease_seconds * RENEWED_RECENTLY_SHARE:
                return
            for attempt in range(1, LEASE_CALL_ATTEMPTS + 1):
                started = _clock()
                try:
                    self._lease.renew(**LEASE_CALL_OPTIONS)
                except HttpResponseError as exc:
                    if exc.status_code == 409:  # broken, or another lease holds it now
                        self._lost = True
                        raise LockLost(f"the lock of destination {self.destination} expired and was taken or "
                                       "broken; this run stopped recording state") from None
                    if attempt == LEASE_CALL_ATTEMPTS or exc.status_code is None or exc.status_code < 500:
                        raise
                    continue
                except AzureError:
                    if attempt == LEASE_CALL_ATTEMPTS:
                        raise
                    continue
                self._renewed_at = started
                return

    def lease_left(self) -> float:
        """Seconds the lease surely has left (counted from when its last renewal was sent)."""
        return self.lease_seconds - (_clock() - self._renewed_at)

    def guard_change(self, worst_case: float) -> None:
        """Before each request that changes SendGrid: renew the lease, and refuse a request that could still be
        running when the lease runs out (another run may then hold the destination and send a newer segment).

        A run paused past its lease (GC, SIGSTOP, a slow network) finds here, before it sends anything more,
        that another run took over: LockLost. No-op when this state holds no lock (dry runs, the CLI export).
        """
        if self._lease is None:
            return
        try:
            self.ensure_lock()
        except LockLost:
            raise
        except AzureError:
            # Storage did not answer: the lease is still surely ours while the time left since its last
            # renewal covers the request (an unexpired lease can only be broken by hand, never taken).
            if self.lease_left() < worst_case + LEASE_MARGIN_SECONDS:
                raise
            log.warning("could not renew the lock of destination %s; %.0fs of the lease are left, enough for the "
                        "next request", self.destination, self.lease_left())
        left = self.lease_left()
        if left < worst_case + LEASE_MARGIN_SECONDS:
            raise LeaseTooShort(f"the lease of destination {self.destination} has {left:.1f}s left after renewing, "
                                f"less than a request to SendGrid may take ({worst_case:.1f}s): storage answers too "
                                "slowly to send safely; nothing more was sent")

    def held_by_a_run(self) -> bool:
        """Whether a live run holds the destination's lock now (a dead run's lease expires within a minute)."""
        try:
            properties = self._container.get_blob_client(self._prefix + "lock").get_blob_properties()
        except ResourceNotFoundError:
            return False
        return str(properties.lease.status) == "locked"

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self._lease is not None:
            with contextlib.suppress(AzureError):  # storage may be down: the lease then simply expires
                self._lease.release(**LEASE_CALL_OPTIONS)
            self._lease = None
