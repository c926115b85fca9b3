"""The Helm chart's bundled Sentinel group (redis.sentinel.enabled), run for real on loopback.

There is no Kubernetes here, so the test takes what the chart renders (the script its pods run,
their environment, the REDIS_URL routers and workers get) and runs three "pods" of it as local
processes: the same script, the same variables, only the peers' addresses are loopback ports
instead of the headless Service's names. It checks what the pods must do on their own: pod 0
starts as master and the others as its replicas, the sentinels agree, a killed master is
replaced, the old master's pod comes back as a replica of the new one, and Corral's clients
follow along with the URL the chart gives them.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import redis

from corral.cluster.redis_client import parse_sentinel_url, sync_client
from corral.supervise import Child
from tests.support.answers import wait_for
from tests.support.helmchart import env_of, one, render
from tests.support.servers import free_port

pytestmark = pytest.mark.integration


def ask(port: int, *command: str):
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True) as client:
            return client.execute_command(*command)
    except redis.RedisError:
        return None


class Pods:
    """Three pods of the rendered StatefulSet, as processes: pod i's Redis and sentinel."""

    def __init__(self, tmp: Path, script: Path, env: dict[str, str], replicas: int) -> None:
        self.tmp, self.script = tmp, script
        self.ports = [(free_port(), free_port()) for _ in range(replicas)]
        self.env = {**env, "PEERS": " ".join(f"127.0.0.1:{r}:{s}" for r, s in self.ports),
                    # What a test can wait for; the chart's own values are checked below.
                    "DOWN_AFTER_MS": "1000", "FAILOVER_TIMEOUT_MS": "5000"}
        self.processes: dict[tuple[int, str], Child] = {}

    def start(self, i: int, mode: str) -> None:
        data, conf = self.tmp / f"pod-{i}" / "data", self.tmp / f"pod-{i}" / "sentinel"
        data.mkdir(parents=True, exist_ok=True)
        conf.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "ME": str(i), "DATA_DIR": str(data), "SENTINEL_DIR": str(conf)}
        log = self.tmp / f"pod-{i}-{mode}.log"
        self.processes[(i, mode)] = Child(f"{mode}-{i}", ["sh", str(self.script), mode], env=env, log=log,
                                          watched=True).start()
        port = self.ports[i][0 if mode == "redis" else 1]
        wait_for(f"pod {i}'s {mode} to answer", lambda: ask(port, "PING"), 30)

    def kill(self, i: int, mode: str) -> None:
        os.killpg(self.processes.pop((i, mode)).pid, signal.SIGKILL)

    def master_port(self, sentinel: int) -> int | None:
        answer = ask(self.ports[sentinel][1], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.env["SERVICE"])
        return int(answer[1]) if answer else None

    def role(self, i: int) -> str | None:
        info = ask(self.ports[i][0], "ROLE")
        return info[0] if info else None

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli missing (Debian redis-tools)")
def test_the_charts_sentinel_group_elects_fails_over_and_takes_its_old_master_back(tmp_path: Path):
    objects, _ = render({"redis": {"sentinel": {"enabled": True}}})
    statefulset = one(objects, "StatefulSet", "corral-redis")
    replicas = statefulset["spec"]["replicas"]
    containers = {c["name"]: c for c in statefulset["spec"]["template"]["spec"]["containers"]}
    env = {k: v["value"] for k, v in env_of(containers["sentinel"]).items() if "value" in v}
    assert env_of(containers["redis"]) == env_of(containers["sentinel"])
    assert env["QUORUM"] == "2" and env["DOWN_AFTER_MS"] == "5000" and replicas == 3
    # The URL routers and workers get names every pod's sentinel and the service they monitor.
    url = env_of(one(objects, "Deployment", "corral-router")["spec"]["template"]["spec"]["containers"][0])
    parsed = parse_sentinel_url(url["REDIS_URL"]["value"])
    assert parsed.service == env["SERVICE"]
    assert [f"{h}:{p}" for h, p in parsed.sentinels] == [
        f"{peer.split(':')[0]}:{peer.split(':')[2]}" for peer in env["PEERS"].split()]
    script = tmp_path / "redis-sentinel.sh"
    script.write_text(one(objects, "ConfigMap", "corral-redis-scripts")["data"]["redis-sentinel.sh"])

    pods = Pods(tmp_path, script, env, replicas)
    try:
        for i in range(replicas):  # OrderedReady: pod i once pod i-1 is ready
            pods.start(i, "redis")
            pods.start(i, "sentinel")
        assert [pods.role(i) for i in range(replicas)] == ["master", "slave", "slave"]
        wait_for("the sentinels to agree",
                 lambda: all(pods.master_port(i) == pods.ports[0][0] for i in range(replicas)), 30)
        wait_for("the sentinels to find each other and the replicas",
                 lambda: all(len(ask(s, "SENTINEL", "SENTINELS", env["SERVICE"]) or []) == replicas - 1
                             and len(ask(s, "SENTINEL", "REPLICAS", env["SERVICE"]) or []) == replicas - 1
                             for _, s in pods.ports), 30)
        sentinel_url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s}" for _, s in pods.ports) + f"/{env['SERVICE']}/0"
        client = sync_client(sentinel_url, socket_timeout=2, socket_connect_timeout=2)
        client.set("corral:test", "before")
        wait_for("replication",
                 lambda: all(ask(pods.ports[i][0], "GET", "corral:test") == "before" for i in (1, 2)), 30)

        pods.kill(0, "redis")
        wait_for("a failover",
                 lambda: all(pods.master_port(i) not in (None, pods.ports[0][0]) for i in range(replicas)), 30)
        new_master = pods.master_port(0)

        def writes() -> bool:
            try:
                client.set("corral:test", "after")
                return True
            except redis.RedisError:
                return False

        wait_for("the client to write to the new master", writes, 30)
        pods.start(0, "redis")  # the pod restarts: the script asks the sentinels who is master now
        wait_for("pod 0 to come back as a replica", lambda: pods.role(0) == "slave", 30)
        info = ask(pods.ports[0][0], "INFO", "replication")
        assert info["master_port"] == new_master
        wait_for("pod 0 to catch up", lambda: ask(pods.ports[0][0], "GET", "corral:test") == "after", 30)
        client.close()
    finally:
        pods.stop()
