"""Helpers of the benchmarks and the e2e load tests (stockex.testing): the machine-CPU
reading printed beside the figures, and the count of sockets listening on the API's port."""

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
