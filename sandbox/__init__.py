"""The embedded local default: a real PostgreSQL primary, streaming replica and pgbouncer."""

from sandbox.cluster import Sandbox, SandboxConfig, SandboxError

__all__ = ["Sandbox", "SandboxConfig", "SandboxError"]
