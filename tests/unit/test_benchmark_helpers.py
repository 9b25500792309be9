"""The machine-CPU reading the benchmarks print beside their figures (stockex.testing)."""

import time

from stockex.testing import machine_cpu_shares, machine_cpu_ticks


def test_shares_split_busy_idle_and_steal() -> None:
    #          user nice sys idle iowait irq softirq steal
    before = [100, 0, 50, 1000, 10, 0, 5, 0]
    after = [160, 0, 70, 1010, 20, 0, 10, 10]  # 60+20+5 busy, 10+10 idle, 10 steal
    assert machine_cpu_shares(before, after) == {"busy": 73.9, "idle": 17.4, "steal": 8.7}


def test_shares_of_this_machine_add_up_and_see_a_busy_loop() -> None:
    before = machine_cpu_ticks()
    assert len(before) == 8
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    shares = machine_cpu_shares(before, machine_cpu_ticks())
    assert abs(sum(shares.values()) - 100) < 0.2
    assert shares["busy"] > 0  # this loop kept at least one CPU busy
