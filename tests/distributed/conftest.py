"""Fixtures of the distributed tests: clients, clusters, and a time limit for every test.

Everything binds to 127.0.0.1, has no dashboard, and is closed with a timeout.  The
process cluster (two nanny-managed single-threaded workers, as ``--workers 2``) is
module-scoped: starting one takes seconds.
"""

from __future__ import annotations

import importlib.util
import os
import signal

import pytest

if importlib.util.find_spec("distributed") is None or importlib.util.find_spec("dask") is None:
    # Without the `dask` extra (CI's bare environment) these modules are not collected:
    # they import dask at the top.  The header says so.
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config):
    if importlib.util.find_spec("distributed") is None:
        return "tests/distributed: not collected (dask.distributed is not installed)"
    return None


@pytest.fixture(autouse=True, scope="module")
def restore_environment():
    """Put ``os.environ`` back after each module.

    Why: starting a process cluster sets ``MALLOC_TRIM_THRESHOLD_``, ``OPENBLAS_NUM_THREADS``
    and others in this process's environment (distributed's ``pre-spawn-environ``), and every
    later subprocess of the suite would inherit them (a set ``MALLOC_TRIM_THRESHOLD_`` turns
    off glibc's adaptive mmap threshold, which tests/engines/test_workspace.py measures).
    """
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


TEST_LIMIT = 180
"""Seconds any one test may take (pytest-timeout is not a dependency)."""
CLOSE_TIMEOUT = 30


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a test that runs longer than TEST_LIMIT seconds instead of hanging the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"test took longer than {TEST_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def thread_client():
    """A client whose workers are threads of this process (the fast cases).

    Its scheduler and workers talk in memory (``inproc://``): no socket is opened.
    """
    from distributed import Client

    client = Client(
        processes=False,
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=None,
        timeout=60,
    )
    yield client
    client.close(timeout=CLOSE_TIMEOUT)


@pytest.fixture(scope="module")
def process_cluster():
    """Two nanny-managed worker processes, one thread each (``--workers 2``)."""
    import dask
    from distributed import LocalCluster

    settings = {
        # A worker asking a killed peer for data retries the connection until this
        # timeout (30 s by default) before the scheduler's news of the death reaches it.
        "distributed.comm.timeouts.connect": "3s",
        # The cluster closes for good a nanny whose worker is absent when this timeout,
        # started at each worker's removal, ends; with workers killed again and again
        # one can be restarting at that instant.  The nannies restart them anyway.
        "distributed.deploy.lost-worker-timeout": "24h",
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # The scheduler's HTTP routes (health, metrics) otherwise take port 8787, or
            # warn and move when another cluster on this machine holds it.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            death_timeout=60,
        )
        yield cluster
        cluster.close(timeout=CLOSE_TIMEOUT)


@pytest.fixture
def process_client(process_cluster):
    """A client of :func:`process_cluster` with both workers up."""
    from distributed import Client

    client = Client(process_cluster, timeout=60)
    client.wait_for_workers(2, timeout=90)
    yield client
    client.close(timeout=CLOSE_TIMEOUT)
