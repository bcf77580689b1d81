"""The MetricsSource block: none, the local host (/proc and statvfs) and Prometheus' query API."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from blocks.metrics_source import HostMetrics, MetricsSource, MetricsUnavailable, local_cpu_percent, local_disk
from tests.prometheus_server import start_fake_prometheus


class TestMetricsSourceStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return MetricsSource

    def test_has_a_valid_image(self, block):
        pytest.skip("no logo: the network is closed here")


@pytest.fixture(scope="module")
def prometheus():
    fake = start_fake_prometheus()
    yield fake
    fake.stop()


def test_none_source_says_not_configured():
    sample = MetricsSource(kind="none").sample()
    assert sample.source == "none" and sample.cpu_percent is None and sample.disk_used_percent is None


def test_local_disk_matches_df():
    path = tempfile.gettempdir()
    percent, total, free = local_disk(path)
    df = subprocess.run(["df", "-P", "-B1", path], capture_output=True, text=True, check=True).stdout.splitlines()[1]
    _, size, used, avail, capacity, _ = df.split(None, 5)
    assert total == int(size)
    assert abs(free - int(avail)) <= total // 1000  # other processes write to the same filesystem meanwhile
    assert abs(percent - int(capacity.rstrip("%"))) <= 1  # df rounds up


def test_local_cpu_is_a_share_of_proc_stat():
    busy = local_cpu_percent(0.1)
    assert 0 <= busy <= 100
    sample = MetricsSource(kind="local", data_path="/", cpu_sample_seconds=0.1).sample()
    assert isinstance(sample, HostMetrics) and sample.cpu_count == os.cpu_count() and sample.disk_path == "/"


def test_local_source_without_path_or_with_a_bad_path_is_a_typed_error():
    with pytest.raises(MetricsUnavailable, match="data_path"):
        MetricsSource(kind="local").sample()
    with pytest.raises(MetricsUnavailable, match="database host"):
        MetricsSource(kind="local", data_path="/no/such/dir").sample()


def test_prometheus_source_queries_node_exporter_series(prometheus):
    prometheus.values = {"node_cpu_seconds_total": 37.54, "node_filesystem_avail_bytes": 61.26,
                         "node_filesystem_size_bytes": 1e11}
    source = MetricsSource(kind="prometheus", prometheus_url=prometheus.url + "/", instance="db1:9100",
                           mountpoint="/var/lib/postgresql", prometheus_token=SecretStr("prom-token"))
    sample = source.sample()
    assert (sample.cpu_percent, sample.disk_used_percent, sample.disk_total_bytes) == (37.5, 61.3, 100_000_000_000)
    assert sample.disk_path == "/var/lib/postgresql"
    cpu_query = prometheus.queries[-4]
    assert 'mode="idle"' in cpu_query and 'instance="db1:9100"' in cpu_query
    assert 'mountpoint="/var/lib/postgresql"' in prometheus.queries[-3]
    assert "node_filesystem_free_bytes" in prometheus.queries[-3]
    assert prometheus.auth[-1] == "Bearer prom-token"
    assert "prom-token" not in repr(source) and "prom-token" not in sample.model_dump_json()


def test_prometheus_empty_result_error_and_unreachable(prometheus):
    source = MetricsSource(kind="prometheus", prometheus_url=prometheus.url, instance="other:9100")
    prometheus.values = {}
    empty = source.sample()
    assert empty.cpu_percent is None and empty.disk_used_percent is None
    prometheus.fail_with = "parse error at char 3"
    try:
        with pytest.raises(MetricsUnavailable, match="HTTP 400: bad_data: parse error"):
            source.sample()
    finally:
        prometheus.fail_with = None
    dead = MetricsSource(kind="prometheus", prometheus_url="http://127.0.0.1:9", instance="x", timeout_seconds=1)
    with pytest.raises(MetricsUnavailable, match="unreachable"):
        dead.sample()
    with pytest.raises(MetricsUnavailable, match="prometheus_url and instance"):
        MetricsSource(kind="prometheus").sample()


def test_promql_label_values_are_escaped(prometheus):
    from blocks.metrics_source import promql_string

    assert promql_string('db"1\\x\n') == 'db\\"1\\\\x\\n'
    assert promql_string("db1:9100") == "db1:9100"
    prometheus.values = {}
    MetricsSource(kind="prometheus", prometheus_url=prometheus.url, instance='a"} or vector(1) #\\',
                  mountpoint='/data "pg"').sample()
    cpu, disk = prometheus.queries[-4], prometheus.queries[-3]
    assert 'instance="a\\"} or vector(1) #\\\\"' in cpu
    assert 'mountpoint="/data \\"pg\\""' in disk and 'instance="a\\"} or vector(1) #\\\\"' in disk
