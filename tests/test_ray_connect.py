"""No stale Ray state: how commands reach Ray with RAY_ADDRESS unset, and simulated clusters leave nothing behind.

Each case runs in a child process with its own Ray temp dir (RAY_TMPDIR), so Ray's `ray_current_cluster` file
of this machine (shared with everything else running here) is never read or written.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def child(code: str, tmpdir: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TMPDIR")}
    env.update(RAY_TMPDIR=tmpdir, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def ray_tmp():
    # short: Ray's unix socket paths live under it
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def test_dead_address_in_ray_current_cluster_fails_fast_in_one_line(ray_tmp):
    Path(ray_tmp, "ray").mkdir()
    Path(ray_tmp, "ray", "ray_current_cluster").write_text("127.0.0.1:1\n")  # nothing listens on port 1
    r = child("""
        import sys, time
        from indextts_ray.errors import UserError
        from indextts_ray.ray_connect import connect
        t = time.time()
        try:
            connect()
        except UserError as e:
            print(f"{time.time() - t:.1f}")
            sys.exit(f"error: {e}")
    """, ray_tmp)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip()
    assert err.count("\n") == 0 and f"{ray_tmp}/ray/ray_current_cluster names the Ray cluster 127.0.0.1:1" in err
    assert "ray stop" in err and float(r.stdout) < 5  # no connection retries
    assert not list(Path(ray_tmp, "ray").glob("session_*"))  # no Ray was started beside it


@pytest.mark.slow
def test_local_ray_is_started_and_its_address_passed_to_workers_then_joined_by_the_next_command(ray_tmp):
    """No file: a local Ray, whose workers have RAY_ADDRESS (Ray's helpers there cannot pick another instance) and
    plain progress output (not a TTY); a live cluster in the file is joined, not duplicated."""
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, ray
        from indextts_ray.ray_connect import connect
        address = connect(num_cpus=1, include_dashboard=False)
        env = ray.get(ray.remote(lambda: (os.environ.get("RAY_ADDRESS"),
                                          os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS"))).remote())
        print(address, *env, flush=True)
        sys.stdin.read()  # stay up until the test is done
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TMPDIR")}, "RAY_TMPDIR": ray_tmp,
             "PYTHONPATH": str(REPO)})
    try:
        address, worker_address, no_bars = first.stdout.readline().split()
        assert worker_address == address and no_bars == "1"
        Path(ray_tmp, "ray", "ray_current_cluster").write_text(address)  # as `ray start` leaves it
        r = child("""
            from indextts_ray.ray_connect import connect
            print(connect())
        """, ray_tmp)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[-1] == address
    finally:
        first.stdin.close()
        first.wait(timeout=60)


@pytest.mark.slow
def test_simulated_cluster_cleans_up_after_an_error(ray_tmp):
    r = child("""
        import ray
        from indextts_ray.ray_connect import address_file, reachable, simulated_cluster
        try:
            with simulated_cluster(num_cpus=1) as cluster:
                ray.init(address=cluster.address)
                address = cluster.address
                raise RuntimeError("benchmark failed")
        except RuntimeError:
            pass
        import os
        print(ray.is_initialized(), os.path.exists(address_file()), reachable(address))
    """, ray_tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["False", "False", "False"]
