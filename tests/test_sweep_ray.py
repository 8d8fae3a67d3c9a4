"""The sweep on Ray (`--backend ray`): every cell recorded once, by the driver, with the statuses of the
local backend; resume, kills, time limits and signals as with the local backend.

One local Ray (`ray.init(num_cpus=2)`) serves the whole module: the sweeps run in this process and
find it open, or join it by address from a subprocess. Cells that must be caught while running are
held by fault injection (cell.FAULT_ENV "hold:batch=N:PATH": the cell writes its pid to PATH.started,
then waits until PATH exists), so no test depends on timing luck. The tests that need no Ray (the
error without it, doctor) run everywhere.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from conftest import poll_until
from ttt_decode import doctor
from ttt_decode.bench.cell import FAULT_ENV
from ttt_decode.bench.records import read_jsonl
from ttt_decode.bench.sweep import COMPILE_CACHE_VARS
from ttt_decode.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = ["--models", "ttt-tiny", "--inner-nets", "mlp_1_dual", "--genlens", "2", "--device", "cpu", "--repeats", "1",
         "--dtype", "float32"]
WAIT_S = 180
# Estimated far over this machine's RAM: recorded oom ("estimate") without allocating.
HUGE = "100000000"


@pytest.fixture(scope="module", autouse=True)
def calibration_cache(tmp_path_factory):
    """One calibration cache for the module: measured by the first cell, read by every later one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTT_DECODE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def no_compile_cache_vars(monkeypatch):
    """Neither compiled-kernel cache variable set (inductor sets TORCHINDUCTOR_CACHE_DIR in a process that
    built a model, as earlier tests here did): the sweep chooses them."""
    for var in COMPILE_CACHE_VARS.values():
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # "local": a Ray of this test's own, even where `ray start` left the address of another one behind.
    # Small object store and no dashboard: light on a 2-core CI machine (the cells send back kilobytes).
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


def sweep(logdir, *extra, backend="ray"):
    return main(["sweep", "--logdir", str(logdir), *SWEEP, "--backend", backend, *extra])


def records(logdir) -> list[dict]:
    return read_jsonl(os.path.join(str(logdir), "results.jsonl"))


def statuses(logdir) -> dict[int, list[str]]:
    """batch -> the statuses of its records, oldest first."""
    by_batch: dict[int, list[str]] = {}
    for r in records(logdir):
        by_batch.setdefault(r["batch"], []).append(r["status"])
    return by_batch


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(condition, what: str, timeout: float = WAIT_S):
    poll_until(condition, what, timeout)


class Hold:
    """The fault injection that holds the cell of one batch size until released."""

    def __init__(self, tmp_path, batch: int):
        self.go = tmp_path / "go"
        self.started = tmp_path / "go.started"
        self.spec = f"hold:batch={batch}:{self.go}"

    def pids(self) -> list[int]:
        return [int(p) for p in self.started.read_text().split()] if self.started.exists() else []

    def reap(self):
        """Release the held cells and wait for them; kill stragglers."""
        self.go.touch()
        for pid in self.pids():
            deadline = time.monotonic() + WAIT_S
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_backend_ray_without_ray_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    logdir = tmp_path / "log"
    assert sweep(logdir, "--batches", "1") == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[ray]"' in err and "--backend ray" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not logdir.exists()  # refused before the plan ran, the logdir untouched


def test_a_folder_named_ray_is_not_taken_for_ray(tmp_path, monkeypatch, capsys):
    """Run from /tmp without Ray installed, `import ray` finds Ray's own /tmp/ray folder (a namespace package)."""
    (tmp_path / "ray").mkdir()
    folder = types.ModuleType("ray")
    folder.__file__, folder.__path__ = None, [str(tmp_path / "ray")]
    monkeypatch.setitem(sys.modules, "ray", folder)
    assert sweep(tmp_path / "log", "--batches", "1") == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[ray]"' in err and str(tmp_path / "ray") in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (line,) = [line for ok, line in doctor.report() if line.startswith("ray")]
    assert line.startswith("ray: not installed") and 'pip install -e ".[ray]"' in line


def test_doctor_says_whether_ray_is_usable(monkeypatch):
    def ray_line():
        return [line for ok, line in doctor.report() if line.startswith("ray")]

    try:
        import ray
    except ImportError:
        ray = None
    expected = f"ray {ray.__version__}: available" if ray else "ray: not installed"
    assert len(ray_line()) == 1 and ray_line()[0].startswith(expected)
    monkeypatch.setitem(sys.modules, "ray", None)
    (hidden,) = ray_line()
    assert hidden.startswith("ray: not installed") and 'pip install -e ".[ray]"' in hidden


def test_every_cell_recorded_once_naming_its_node_and_a_rerun_skips_them(ray_session, tmp_path, capsys):
    node = ray_session.get_runtime_context().get_node_id()
    assert sweep(tmp_path, "--batches", "1,2") == 0
    recs = records(tmp_path)
    assert sorted(r["batch"] for r in recs) == [1, 2] and len({r["cell_id"] for r in recs}) == 2
    assert all(r["status"] == "ok" and r["ray_node"]["id"] == node and r["ray_node"]["ip"] for r in recs)
    assert all(r["gpu_assigned"] is None for r in recs)  # CPU slots: Ray gave no GPU
    assert all((tmp_path / ".sweep" / f"cell-{r['cell_id']}.log").stat().st_size > 0 for r in recs)
    # The cells on Ray get the sweep's shared compiled-kernel caches (their records say what they saw).
    caches = {"inductor": str(tmp_path / ".compile-cache" / "inductor"),
              "triton": str(tmp_path / ".compile-cache" / "triton")}
    assert all(r["compile_cache"] == caches for r in recs)
    capsys.readouterr()
    # Resume: with one more batch size only that cell runs; then nothing does.
    assert sweep(tmp_path, "--batches", "1,2,3") == 0
    assert "3 cells, 2 already recorded, 1 to run" in capsys.readouterr().out
    assert sweep(tmp_path, "--batches", "1,2,3") == 0
    assert "3 cells, 3 already recorded, 0 to run" in capsys.readouterr().out
    assert statuses(tmp_path) == {1: ["ok"], 2: ["ok"], 3: ["ok"]}


def test_same_plan_same_cells_and_statuses_as_the_local_backend(ray_session, tmp_path, monkeypatch, capsys):
    """B=2 kills itself (SIGKILL) inside its task: killed, and the others finish; B=HUGE is oom by estimate
    (made by the local sweep, by the cell on its node with Ray). Then --retry killed reruns only B=2."""
    plan = ("--batches", f"1,2,{HUGE}")
    monkeypatch.setenv(FAULT_ENV, "kill:batch=2")
    mine = str(tmp_path / "my-triton-cache")  # the user's: kept by both backends
    monkeypatch.setenv("TRITON_CACHE_DIR", mine)
    assert sweep(tmp_path / "local", *plan, backend="local") == 1
    assert sweep(tmp_path / "ray", *plan) == 1
    local, on_ray = records(tmp_path / "local"), records(tmp_path / "ray")
    assert {r["cell_id"]: r["status"] for r in on_ray} == {r["cell_id"]: r["status"] for r in local}
    assert statuses(tmp_path / "ray") == {1: ["ok"], 2: ["killed"], int(HUGE): ["oom"]}
    by_batch = {r["batch"]: r for r in on_ray}
    assert by_batch[2]["error"] == "cell process killed by signal 9" and by_batch[2]["ray_node"]["id"]
    assert "estimate" in by_batch[int(HUGE)]["error"]
    for backend, recs in (("local", local), ("ray", on_ray)):
        inductor = str(tmp_path / backend / ".compile-cache" / "inductor")
        assert all(r["compile_cache"] == {"inductor": inductor, "triton": mine} for r in recs), backend
    monkeypatch.delenv(FAULT_ENV)
    capsys.readouterr()
    assert sweep(tmp_path / "ray", *plan, "--retry", "killed") == 0
    assert "2 already recorded, 1 to run (1 retried: --retry killed)" in capsys.readouterr().out
    assert statuses(tmp_path / "ray") == {1: ["ok"], 2: ["killed", "ok"], int(HUGE): ["oom"]}


def test_a_ray_worker_killed_under_its_cell_is_recorded_killed_and_the_others_finish(ray_session, tmp_path,
                                                                                     monkeypatch):
    hold = Hold(tmp_path, batch=1)
    monkeypatch.setenv(FAULT_ENV, hold.spec)
    logdir = tmp_path / "log"
    result = {}
    driver = threading.Thread(target=lambda: result.update(rc=sweep(logdir, "--batches", "1,2")))
    driver.start()
    try:
        wait_until(hold.pids, "the held cell to start")
        (cell,) = hold.pids()
        with open(f"/proc/{cell}/stat") as fh:
            worker = int(fh.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{worker}/cmdline", "rb") as fh:
            title = fh.read()
        # A Ray worker names itself after its task; never kill anything else.
        assert title.startswith(b"ray::_cell_task") and worker != os.getpid(), f"the cell's parent is {title!r}"
        os.kill(worker, signal.SIGKILL)
        driver.join(WAIT_S)
        assert not driver.is_alive() and result["rc"] == 1
        wait_until(lambda: not alive(cell), "the cell to die with its worker", timeout=30)
    finally:
        hold.reap()
        driver.join(WAIT_S)
    assert statuses(logdir) == {1: ["killed"], 2: ["ok"]}
    killed = [r for r in records(logdir) if r["batch"] == 1][0]
    assert "the Ray worker running the cell died (WorkerCrashedError" in killed["error"]


def test_cell_timeout_kills_the_cell_inside_its_task_and_records_timeout(ray_session, tmp_path, monkeypatch):
    # Held and never released: the cell cannot end before the limit, whatever the machine's speed.
    hold = Hold(tmp_path, batch=1)
    monkeypatch.setenv(FAULT_ENV, hold.spec)
    try:
        assert sweep(tmp_path / "log", "--batches", "1", "--cell-timeout", "2") == 1
        assert not any(alive(pid) for pid in hold.pids())
    finally:
        hold.reap()
    (rec,) = records(tmp_path / "log")
    assert rec["status"] == "timeout" and rec["error"] == "no result within --cell-timeout 2 s"
    assert rec["ray_node"]["id"] == ray_session.get_runtime_context().get_node_id()


def test_a_driver_joins_the_cluster_by_address_and_sigterm_stops_its_cell_unrecorded(ray_session, tmp_path):
    """A second sweep process joins the module's Ray with --ray-address; SIGTERM stops it (exit 143) and its
    running cell, recording nothing; the rerun records the cell once, on the cluster's node."""
    address = ray_session.get_runtime_context().gcs_address
    hold = Hold(tmp_path, batch=1)
    logdir = tmp_path / "log"
    argv = [sys.executable, "-m", "ttt_decode.cli", "sweep", "--logdir", str(logdir), *SWEEP, "--backend", "ray",
            "--ray-address", address, "--batches", "1"]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    out = tmp_path / "first.out"
    with open(out, "w") as fh:
        first = subprocess.Popen(argv, cwd=ROOT, env={**env, FAULT_ENV: hold.spec}, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_until(hold.pids, "the held cell to start")
        (cell,) = hold.pids()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=WAIT_S) == 128 + signal.SIGTERM, out.read_text()[-3000:]
        assert "stopped by SIGTERM" in out.read_text() and records(logdir) == []
        wait_until(lambda: not alive(cell), "the stopped cell to die", timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        hold.reap()
    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert rerun.returncode == 0 and "1 to run" in rerun.stdout, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    (rec,) = records(logdir)
    assert rec["status"] == "ok" and rec["ray_node"]["id"] == ray_session.get_runtime_context().get_node_id()


def test_without_an_address_the_sweep_starts_a_ray_of_its_own(ray_session, tmp_path):
    """No --ray-address and no RAY_ADDRESS: a Ray of the sweep's own on this machine, never the one
    already running here (the module's)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.path.join(ROOT, "src")
    argv = [sys.executable, "-m", "ttt_decode.cli", "sweep", "--logdir", str(tmp_path), *SWEEP, "--backend", "ray",
            "--batches", "1"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Ray backend, " in done.stdout and "CPU slot(s)" in done.stdout
    (rec,) = records(tmp_path)
    assert rec["status"] == "ok" and rec["ray_node"]["id"] != ray_session.get_runtime_context().get_node_id()
