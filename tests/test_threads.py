"""almat.threads: the free cores from a pair of /proc/stat readings, ALMAT_NUM_THREADS, torch's threads per job."""

import pytest

from almat import threads

#: user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = """cpu  1000 0 500 8000 100 0 0 0 0 0
cpu0 600 0 300 3000 50 0 0 0 0 0
cpu1 400 0 200 5000 50 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
# over the window: cpu0 busy (100 jiffies of user), cpu1 idle (100 jiffies of idle)
AFTER = """cpu  1100 0 500 8100 100 0 0 0 0 0
cpu0 700 0 300 3000 50 0 0 0 0 0
cpu1 400 0 200 5100 50 0 0 0 0 0
intr 12400 0 0
"""


def test_parse_cpu_times_all_and_per_cpu():
    assert threads.parse_cpu_times(BEFORE) == (8100, 9600)
    assert threads.parse_cpu_times(BEFORE, {0}) == (3050, 3950)
    assert threads.parse_cpu_times(BEFORE, {0, 1}) == (8100, 9600)
    assert threads.parse_cpu_times(BEFORE, {7}) == (8100, 9600)  # no such line: all CPUs
    assert threads.parse_cpu_times("intr 1 2\n\n") is None


def test_idle_share_of_a_pair():
    assert threads.idle_share(threads.parse_cpu_times(BEFORE), threads.parse_cpu_times(AFTER)) == pytest.approx(0.5)
    assert threads.idle_share(threads.parse_cpu_times(BEFORE, {0}), threads.parse_cpu_times(AFTER, {0})) == 0.0
    assert threads.idle_share(threads.parse_cpu_times(BEFORE, {1}), threads.parse_cpu_times(AFTER, {1})) == 1.0
    assert threads.idle_share(threads.parse_cpu_times(BEFORE), threads.parse_cpu_times(BEFORE)) is None
    assert threads.idle_share(None, (1, 2)) is None


@pytest.mark.parametrize("free, cores, expected", [(2.0, 2, 2), (1.4, 2, 1), (1.6, 2, 2), (0.0, 2, 1),
                                                   (0.3, 1, 1), (15.2, 16, 15), (20.0, 16, 16)])
def test_threads_for_free_cores(free, cores, expected):
    assert threads.threads_for(free, cores) == expected


def test_requested_and_environment(monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda window_s=threads.WINDOW_S: 0.2)
    monkeypatch.delenv("ALMAT_NUM_THREADS", raising=False)
    assert threads.job_threads() == 1
    assert threads.job_threads(3) == 3
    monkeypatch.setenv("ALMAT_NUM_THREADS", " 4 ")
    assert threads.job_threads() == 4
    assert threads.job_threads(2) == 2  # a learner's num_threads wins
    monkeypatch.setenv("ALMAT_NUM_THREADS", "")
    assert threads.job_threads() == 1


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_bad_environment_value_is_one_line(monkeypatch, value):
    monkeypatch.setenv("ALMAT_NUM_THREADS", value)
    with pytest.raises(ValueError) as info:
        threads.job_threads()
    message = str(info.value)
    assert "\n" not in message and "ALMAT_NUM_THREADS" in message and repr(value) in message


def test_free_cores_is_bounded():
    free = threads.free_cores(window_s=0.01)
    assert 0.0 <= free <= threads.available_cores()


def test_torch_threads_restores(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setenv("ALMAT_NUM_THREADS", str(before + 1))
    with threads.torch_threads() as n:
        assert n == before + 1 and torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
