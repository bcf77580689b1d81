"""The prometheus MetricsSource against a real Prometheus scraping a real node_exporter (Debian packages
`prometheus` and `prometheus-node-exporter`); skipped when they are not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from blocks.metrics_source import MetricsSource, local_disk
from sandbox.cluster import free_port
from tests.helpers import wait_for

PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")

pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and NODE_EXPORTER),
    reason="apt-get install prometheus prometheus-node-exporter to run this against a real Prometheus")


def _query(url: str, promql: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                timeout=2) as response:
        return json.loads(response.read())["data"]["result"]


@pytest.fixture(scope="module")
def real_prometheus():
    base = Path(tempfile.mkdtemp(prefix="pgrb-prom-"))
    exporter_port, prom_port = free_port(), free_port()
    exporter = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{exporter_port}", "--collector.disable-defaults",
         "--collector.cpu", "--collector.filesystem", "--collector.filesystem.fs-types-exclude=^(proc|sysfs)$"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (base / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n")
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={base / 'prometheus.yml'}", f"--storage.tsdb.path={base / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{prom_port}"
    instance = f"127.0.0.1:{exporter_port}"
    try:
        def has_rate():
            try:
                return _query(url, f'rate(node_cpu_seconds_total{{instance="{instance}"}}[1m])')
            except OSError:
                return False
        wait_for(has_rate, timeout=60, interval=0.5, what="Prometheus to have two scrapes")
        yield url, instance
    finally:
        for proc in (prom, exporter):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_real_prometheus_gives_cpu_and_the_disk_statvfs_sees(real_prometheus):
    url, instance = real_prometheus
    mountpoint = subprocess.run(["df", "--output=target", "/"], capture_output=True, text=True,
                                check=True).stdout.splitlines()[1].strip()
    sample = MetricsSource(kind="prometheus", prometheus_url=url, instance=instance, mountpoint=mountpoint).sample()
    assert 0 <= sample.cpu_percent <= 100
    percent, total, free = local_disk(mountpoint)
    assert sample.disk_total_bytes == total
    assert abs(sample.disk_used_percent - percent) < 1.0, (sample, percent)  # same df arithmetic
    assert abs(sample.disk_free_bytes - free) <= total // 100
    assert os.cpu_count() >= 1


def test_real_prometheus_unknown_instance_is_empty_not_an_error(real_prometheus):
    url, _ = real_prometheus
    sample = MetricsSource(kind="prometheus", prometheus_url=url, instance="nowhere:9100").sample()
    assert sample.cpu_percent is None and sample.disk_used_percent is None


def test_real_prometheus_hostile_label_values_are_escaped_not_injected(real_prometheus):
    url, instance = real_prometheus
    # Unescaped, this instance would close the selector and make every query answer 100 (or fail to parse).
    hostile = MetricsSource(kind="prometheus", prometheus_url=url, instance=instance + '"} or vector(100) or x{a="',
                            mountpoint='C:\\data "pg"').sample()
    assert hostile.cpu_percent is None and hostile.disk_used_percent is None and hostile.disk_total_bytes is None
