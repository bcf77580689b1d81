"""The MetricsSource block: where CPU and disk figures of a database host come from.

PostgreSQL does not expose CPU or filesystem usage through SQL, so reports and alerts
ask a pluggable source:

- ``none``: not configured; the section says so.
- ``local``: the worker runs on the database host (as with the sandbox): CPU from
  /proc/stat, disk from statvfs of the data directory's filesystem.
- ``prometheus``: node_exporter series through Prometheus' HTTP API (/api/v1/query).
- ``cloudwatch``: an Aurora cluster's CloudWatch metrics (GetMetricData), through the AuroraCluster block named
  in ``aurora_block``; sampled by tasks/core/host_metrics.py (``read_source``), which every consumer calls.

API for every consumer (report, alerts): ``MetricsSource.load(name).sample(data_path=...)``
returns a ``HostMetrics``; it raises ``MetricsUnavailable`` with what to fix.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr

SourceKind = Literal["none", "local", "prometheus", "cloudwatch"]

# Busy CPU share of one instance over the last 5 minutes (node_exporter).
PROMETHEUS_CPU_QUERY = '100 * (1 - avg(rate(node_cpu_seconds_total{{mode="idle",instance="{instance}"}}[5m])))'
_FS = '{{instance="{instance}",mountpoint="{mountpoint}"}}'
# Used share of the filesystem mounted at the data directory, as df computes it (used / (used + available
# to non-root)), so the local and Prometheus sources agree even with reserved blocks (node_exporter).
PROMETHEUS_DISK_QUERY = (
    f"100 * (node_filesystem_size_bytes{_FS} - node_filesystem_free_bytes{_FS})"
    f" / (node_filesystem_size_bytes{_FS} - node_filesystem_free_bytes{_FS} + node_filesystem_avail_bytes{_FS})"
)
# Size of that filesystem in bytes.
PROMETHEUS_DISK_SIZE_QUERY = f"node_filesystem_size_bytes{_FS}"
# Bytes still available to PostgreSQL (non-root) on it.
PROMETHEUS_DISK_AVAIL_QUERY = f"node_filesystem_avail_bytes{_FS}"


class MetricsUnavailable(RuntimeError):
    """The source could not produce figures; the message says what to fix."""


class HostMetrics(BaseModel):
    """CPU and disk of one database host at one moment."""

    source: SourceKind
    sampled_at: datetime
    cpu_percent: float | None = Field(default=None, description="Busy CPU share, 0-100, all cores.")
    cpu_count: int | None = None
    load_1m: float | None = None
    disk_path: str | None = Field(default=None, description="The path (or mountpoint) measured.")
    disk_used_percent: float | None = Field(default=None, description="Used share of that filesystem, 0-100.")
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    capacity_acu: float | None = Field(default=None, description="cloudwatch: ServerlessDatabaseCapacity (0 = paused).")
    acu_utilization_percent: float | None = Field(default=None, description="cloudwatch: ACUUtilization.")
    connections: float | None = Field(default=None, description="cloudwatch: DatabaseConnections.")
    replica_lag_ms: float | None = Field(default=None, description="cloudwatch: ReplicaLag (readers).")
    note: str | None = Field(default=None, description="What the figures mean on this source.")

    @property
    def summary(self) -> str:
        cpu = f"CPU {self.cpu_percent:.0f} % busy" if self.cpu_percent is not None else "CPU unknown"
        disk = (f"disk {self.disk_used_percent:.0f} % used at {self.disk_path}"
                if self.disk_used_percent is not None else "disk unknown")
        if self.source == "cloudwatch":
            cap = f"{self.capacity_acu:g} ACU" if self.capacity_acu is not None else "capacity unknown"
            free = (f"{self.disk_free_bytes / 2**30:.1f} GiB free local storage" if self.disk_free_bytes is not None
                    else "free local storage unknown")
            return f"{cpu} (of max ACU); {cap}; {free}; no disk-used share on Aurora (source: cloudwatch)."
        return f"{cpu}; {disk} (source: {self.source})."


def _cpu_times(stat_path: str) -> tuple[int, int]:
    """(busy, total) jiffies of the aggregate 'cpu' line of /proc/stat."""
    with open(stat_path) as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise MetricsUnavailable(f"{stat_path} has no aggregate cpu line")
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest times are already in user/nice
    return total - idle, total


def local_cpu_percent(interval: float = 0.25, stat_path: str = "/proc/stat") -> float:
    """Busy CPU share between two reads of /proc/stat `interval` seconds apart."""
    try:
        busy1, total1 = _cpu_times(stat_path)
        time.sleep(interval)
        busy2, total2 = _cpu_times(stat_path)
    except OSError as exc:
        raise MetricsUnavailable(f"cannot read {stat_path}: {exc.strerror}; is the worker on Linux?") from None
    elapsed = total2 - total1
    return 0.0 if elapsed <= 0 else round(100.0 * (busy2 - busy1) / elapsed, 1)


def local_disk(path: str) -> tuple[float, int, int]:
    """(used percent, total bytes, free bytes) of the filesystem holding `path`, as df computes it."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise MetricsUnavailable(
            f"cannot stat {path}: {exc.strerror}; the local source needs the worker on the database host") from None
    total = st.f_blocks * st.f_frsize
    free_for_users = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    usable = used + free_for_users
    percent = 100.0 * used / usable if usable else 0.0
    return round(percent, 1), total, free_for_users


class MetricsSource(Block):
    """Where CPU and disk of a PostgreSQL host come from: none, the local host, or Prometheus."""

    _block_type_name = "Host Metrics Source"
    _block_type_slug = "host-metrics-source"
    _description = "CPU and disk figures for pg-runbooks reports and alerts: none, local host, or Prometheus."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#daily-performance-report-and-troubleshooters-runbooks-12-31-32"

    kind: SourceKind = Field(
        default="none", description="none, local (worker on the DB host), prometheus, or cloudwatch (Aurora).")
    aurora_block: str | None = Field(
        default=None, description="cloudwatch: name of the AuroraCluster block whose CloudWatch metrics are read.")
    data_path: str | None = Field(
        default=None, description="local: path whose filesystem is measured (default: the server's data_directory).")
    cpu_sample_seconds: float = Field(default=0.25, ge=0.05, le=10, description="local: CPU sampling window.")
    prometheus_url: str | None = Field(
        default=None, description="prometheus: base URL, e.g. http://prometheus:9090 (no /api/v1).")
    prometheus_token: SecretStr | None = Field(default=None, description="prometheus: bearer token, if any.")
    instance: str | None = Field(default=None, description="prometheus: node_exporter instance label, host:9100.")
    mountpoint: str = Field(default="/", description="prometheus: mountpoint of the data directory's filesystem.")
    timeout_seconds: float = Field(default=5, ge=0.5, le=60, description="prometheus: HTTP timeout.")

    def sample(self, data_path: str | None = None) -> HostMetrics:
        """CPU and disk now. `data_path` is the fallback path for the local source."""
        now = datetime.now(UTC)
        if self.kind == "none":
            return HostMetrics(source="none", sampled_at=now)
        if self.kind == "local":
            return self._sample_local(now, self.data_path or data_path)
        if self.kind == "cloudwatch":
            raise MetricsUnavailable("a cloudwatch source is sampled through tasks.core.host_metrics.read_source")
        return self._sample_prometheus(now)

    def _sample_local(self, now: datetime, path: str | None) -> HostMetrics:
        if not path:
            raise MetricsUnavailable("the local source needs a data_path (or the server's data_directory)")
        percent, total, free = local_disk(path)
        return HostMetrics(
            source="local", sampled_at=now, cpu_percent=local_cpu_percent(self.cpu_sample_seconds),
            cpu_count=os.cpu_count(), load_1m=round(os.getloadavg()[0], 2), disk_path=path,
            disk_used_percent=percent, disk_total_bytes=total, disk_free_bytes=free)

    def _sample_prometheus(self, now: datetime) -> HostMetrics:
        if not self.prometheus_url or not self.instance:
            raise MetricsUnavailable("the prometheus source needs prometheus_url and instance")
        labels = {"instance": promql_string(self.instance), "mountpoint": promql_string(self.mountpoint)}
        return HostMetrics(
            source="prometheus", sampled_at=now,
            cpu_percent=_round(self.query(PROMETHEUS_CPU_QUERY.format(**labels))),
            disk_path=self.mountpoint,
            disk_used_percent=_round(self.query(PROMETHEUS_DISK_QUERY.format(**labels))),
            disk_total_bytes=_int(self.query(PROMETHEUS_DISK_SIZE_QUERY.format(**labels))),
            disk_free_bytes=_int(self.query(PROMETHEUS_DISK_AVAIL_QUERY.format(**labels))))

    def query(self, promql: str) -> float | None:
        """One instant query; the first sample's value, or None when the result is empty."""
        url = f"{self.prometheus_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.prometheus_token is not None:
            request.add_header("Authorization", f"Bearer {self.prometheus_token.get_secret_value()}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise MetricsUnavailable(f"Prometheus answered HTTP {exc.code}: {_error_of(exc)}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MetricsUnavailable(f"Prometheus at {self.prometheus_url} is unreachable: {reason}") from None
        except ValueError:
            raise MetricsUnavailable("Prometheus answered with something that is not JSON") from None
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus query failed: {body.get('errorType')}: {body.get('error')}")
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar":
            return float(result[1])
        if not result:
            return None
        return float(result[0]["value"][1])


_PROMQL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def promql_string(value: str) -> str:
    """`value` escaped for the inside of a double-quoted PromQL string (Go escapes: backslash, double
    quote, newline, carriage return, tab), so a label value can never end the string or the selector.
    https://prometheus.io/docs/prometheus/latest/querying/basics/#string-literals"""
    return "".join(_PROMQL_ESCAPES.get(ch, ch) for ch in value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _error_of(exc: urllib.error.HTTPError) -> str:
    """The errorType and error of a Prometheus error body, else the HTTP reason."""
    try:
        body = json.loads(exc.read())
        return f"{body.get('errorType')}: {body.get('error')}"
    except (ValueError, OSError, AttributeError):
        return str(exc.reason)
