"""Direct streaming's wire formats (corral.cluster.direct): what a router, nginx and a worker
pass each other, read back exactly, and anything else refused; and which workers nginx can
reach by address."""

from __future__ import annotations

import pytest

from corral.cluster import direct
from corral.cluster.workers import WorkerInfo
from corral.router.direct import worker_address

INBOX = direct.inbox_key("0123456789abcdef0123456789abcdef")


def test_a_lease_reads_back_as_written():
    lease = direct.Lease(INBOX, "1f", "host-11434-a1b2c3")
    assert direct.Lease.parse(lease.header()) == lease


@pytest.mark.parametrize("value", [
    "",
    f"{INBOX} 1f",  # no worker
    f"{INBOX} 1f w extra",
    f"{INBOX}  1f w",
    f"corral:inbox:0123 1f w",  # not a router's inbox
    f"corral:placed:w 1f w",  # another key: a lease must not make a worker write there
    f"{INBOX.upper()} 1f w",
    f"{INBOX} 1g w",
    f"{INBOX} {'f' * 33} w",
    f"{INBOX} 1f w/../x",
    f"{INBOX} 1f {'w' * 201}",
    f"{INBOX} 1f w" + " " * 300,
    f"{INBOX} 1f w\r\nx-injected: 1",
])
def test_a_lease_no_router_wrote_is_refused(value: str):
    assert direct.Lease.parse(value) is None


@pytest.mark.parametrize("report", [
    direct.Report(direct.STARTED, "a"),
    direct.Report(direct.ENDED, "a", 200, 12),
    direct.Report(direct.ENDED, "ff", 0, -1),
    direct.Report(direct.ENDED, "ff", 503, 0),
])
def test_a_report_reads_back_as_written(report: direct.Report):
    assert direct.Report.parse(report.line()) == report
    assert direct.Report.parse(report.line().encode()) == report


@pytest.mark.parametrize("line", [
    "", "s", "s a b", "e a 200", "e a 200 1 2", "x a", "e a 2000 1", "e a 600 1", "e a 200 -2",
    "e a 200 1e3", "e a 0200 1", "s " + "a" * 33, "e a 200 " + "9" * 10, "s \u0661", b"s \xff",
])
def test_anything_else_in_an_inbox_is_refused(line: str | bytes):
    assert direct.Report.parse(line) is None


def _worker(url: str) -> WorkerInfo:
    return WorkerInfo(id="w", url=url, memory_total=1, num_parallel=1, max_loaded=1, started_at=0)


@pytest.mark.parametrize(("url", "address"), [
    ("http://10.0.0.5:11434", "10.0.0.5:11434"),
    ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
    ("http://[::1]:11434", "[::1]:11434"),
    ("http://worker-1:11434", None),  # nginx would need a resolver: relayed
    ("https://10.0.0.5:11434", None),
    ("http://10.0.0.5", None),
])
def test_nginx_is_given_only_addresses_it_can_reach(url: str, address: str | None):
    assert worker_address(_worker(url)) == address
