"""Helpers of the benchmarks and the e2e load tests (stockex.testing): the machine-CPU
reading printed beside the figures, and the count of sockets listening on the API's port;
and how ``benchmarks/orders.py`` pools its rounds into the figures it prints."""

import contextlib
import socket
import time

from stockex.testing import free_port, listening_sockets, machine_cpu_shares, machine_cpu_ticks


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


def test_listening_sockets_counts_each_reuseport_listener_and_nothing_else() -> None:
    port = free_port()
    assert listening_sockets(port) == 0
    with contextlib.ExitStack() as stack:
        listeners = []
        for _ in range(3):  # as granian's workers do: one socket each, SO_REUSEPORT
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            listeners.append(sock)
        assert listening_sockets(port) == 0  # bound, not listening yet
        for count, sock in enumerate(listeners, start=1):
            sock.listen()
            assert listening_sockets(port) == count
        client = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        assert client.getsockname()[1] != port
        assert listening_sockets(port) == 3  # an established connection is not a listener
    assert listening_sockets(port) == 0


def _orders_benchmark():  # type: ignore[no-untyped-def]
    """benchmarks/orders.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "orders.py"
    spec = importlib.util.spec_from_file_location("orders_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_orders_benchmark_pools_its_rounds_over_every_request_and_second() -> None:
    bench = _orders_benchmark()
    idle = [0, 0, 0, 0, 0, 0, 0, 0]
    fast = bench.Window(
        seconds=10.0, latencies=[0.010] * 600, statuses={201: 600, 400: 10},
        cpu_seconds={"api": 1.2, "mysql": 0.6}, ticks=[900, 0, 100, 0, 0, 0, 0, 0],
        load_average=[1.0, 1.5])
    slow = bench.Window(
        seconds=5.0, latencies=[0.050] * 400, statuses={201: 400},
        cpu_seconds={"api": 1.0, "mysql": 0.5}, ticks=[500, 0, 0, 500, 0, 0, 0, 0],
        load_average=[1.5, 2.0])
    pooled = bench.report([fast, slow])
    # 1,000 orders in 15 s, not the mean of the windows' rates (60/s and 80/s)
    assert pooled["count"] == 1000 and pooled["per_second"] == 66.7
    assert pooled["statuses"] == {201: 1000, 400: 10}
    assert pooled["p50_ms"] == 10.0 and pooled["p99_ms"] == 50.0  # over every latency
    # CPU per request handled, the 400s included: 2.2 s and 1.1 s over 1,010 requests
    assert pooled["cpu_ms_per_order"] == {"api": 2.178, "mysql": 1.089}
    assert pooled["machine_cpu_percent"] == {"busy": 75.0, "idle": 25.0, "steal": 0.0}
    assert pooled["machine_load_average"] == [[1.0, 1.5], [1.5, 2.0]]
    assert bench.report([fast])["per_second"] == 60.0
    # the baseline has no HTTP statuses: CPU per committed transaction
    raw = bench.Window(seconds=5.0, latencies=[0.002] * 500, statuses={},
                       cpu_seconds={"mysql": 0.25}, ticks=idle, load_average=[0.0, 0.0])
    tx = bench.report([raw], per="tx")
    assert tx["per_second"] == 100.0 and tx["cpu_ms_per_tx"] == {"mysql": 0.5}
    assert "statuses" not in tx


def test_orders_benchmark_round_figures_compare_each_server_with_its_rounds_baseline() -> None:
    bench = _orders_benchmark()

    def window(count: int, latency: float) -> object:
        return bench.Window(seconds=10.0, latencies=[latency] * count, statuses={201: count},
                            cpu_seconds={"api": 1.0}, ticks=[1] * 8, load_average=[0.0, 0.0])

    last = {"granian": window(5200, 0.05), "gunicorn": window(5200, 0.15),
            "baseline": window(12000, 0.01)}
    figures = bench.round_figures(["granian", "baseline", "gunicorn"], last)
    assert figures["order"] == ["granian", "baseline", "gunicorn"]
    assert figures["baseline"] == 1200.0
    assert figures["granian"] == {"per_second": 520.0, "p99_ms": 50.0, "ratio": 0.433,
                                  "met": True}
    # as fast, but its p99 is over 100 ms: the target is not met
    assert figures["gunicorn"]["met"] is False
