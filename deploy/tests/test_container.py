"""The container image, built and run here with podman (runc, cgroupfs).

Runs only with PUBMESH_CONTAINER_TESTS=1 (./scripts/test sets it after
installing podman, runc and debootstrap). The image is built from
deploy/docker/Dockerfile's runtime stage on a local Debian base
(deploy/docker/base-image.sh, made once and cached) with the release binary
built on the host (deploy/docker/build-image.sh). Redis runs on the host on a
free port; containers use the host network.

- the image runs as uid 10001 on a read-only root filesystem;
- the shipped binary has no debug info (kept apart, linked by .gnu_debuglink);
- /readyz is the health probe: healthy with Redis, unhealthy without it;
- SIGTERM drains inside the container: a connected client gets 1012 and the
  process exits 0 before the drain window ends;
- three containers + Redis pass a cross-node smoke test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from conftest import REPO
from test_live_prometheus import eventually, free_port, http_get

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
# This machine caps every process at 20,000 open files: podman's default
# (1,048,576) cannot be set, so every run states its limits.
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
BASE = "localhost/debian-base"
API_KEY = "container-test-key"
DRAIN_SECONDS = 6
RUN_ID = uuid.uuid4().hex[:8]


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image():
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are not installed (./scripts/test installs them)", pytrace=False)
    subprocess.run([str(REPO / "deploy/docker/base-image.sh"), BASE], check=True, timeout=900)
    tag = f"localhost/pubmesh:test-{RUN_ID}"
    subprocess.run([str(REPO / "deploy/docker/build-image.sh"), "--engine", "podman",
                    "--base", BASE, "--tag", tag], check=True, timeout=1800, cwd=REPO)
    yield tag
    podman("rmi", "-f", tag, check=False)


class Redis:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(self.pong, "redis-server")

    def pong(self) -> bool:
        import socket
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture()
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


class Containers:
    """Containers this test started; removed (by name) at the end."""

    def __init__(self, image: str):
        self.image = image
        self.names: list[str] = []

    def node(self, redis_port: int | None, *extra: str) -> tuple[str, int]:
        name = f"pubmesh-test-{RUN_ID}-{len(self.names)}"
        port = free_port()
        # The address goes in PUBMESH_LISTEN, as in a real deployment: the
        # image's HEALTHCHECK probes /readyz on that variable's port.
        args = ["--node-id", name.replace("pubmesh-test-", "c"),
                "--api-key", API_KEY, "--drain-seconds", str(DRAIN_SECONDS), *extra]
        if redis_port is not None:
            args += ["--redis-url", f"redis://127.0.0.1:{redis_port}"]
        podman("run", "-d", "--name", name, "--network", "host", "--read-only",
               "--env", f"PUBMESH_LISTEN=127.0.0.1:{port}",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               *LIMITS, self.image, *args)
        self.names.append(name)
        return name, port

    def logs(self, name: str) -> str:
        return podman("logs", name, check=False).stderr

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "0", name, check=False)


@pytest.fixture()
def containers(image):
    c = Containers(image)
    yield c
    c.remove_all()


def ready(port: int) -> bool:
    return json.loads(http_get(f"http://127.0.0.1:{port}/readyz")).get("ready") is True


def api_post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def inspect(name: str) -> dict:
    return json.loads(podman("inspect", name).stdout)[0]


def test_image_runs_as_non_root_on_a_read_only_root(image, containers, redis):
    assert json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["User"] == "10001:10001"
    name, port = containers.node(redis.port)
    eventually(lambda: ready(port), "container node ready")
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    state = inspect(name)
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    write = podman("exec", name, "sh", "-c", "echo x > /usr/local/bin/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write


def test_the_shipped_binary_has_no_debug_info(image, tmp_path):
    shipped = tmp_path / "pubmesh"
    with open(shipped, "wb") as out:
        subprocess.run([*PODMAN, "run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "/bin/cat",
                        image, "/usr/local/bin/pubmesh"], stdout=out, check=True, timeout=120)
    sections = subprocess.run(["readelf", "-S", "-W", str(shipped)], capture_output=True,
                              text=True, check=True).stdout
    assert ".debug_info" not in sections
    assert ".gnu_debuglink" in sections and ".symtab" in sections
    debug = REPO / "target/release/pubmesh.debug"
    assert ".debug_info" in subprocess.run(["readelf", "-S", "-W", str(debug)], capture_output=True,
                                           text=True, check=True).stdout
    # Far below the 74 MB of the binary with debug info.
    assert shipped.stat().st_size < 40 * 1024 * 1024, shipped.stat().st_size


def test_readyz_is_the_health_probe(containers, redis):
    name, port = containers.node(redis.port)
    eventually(lambda: ready(port), "container node ready")
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    redis.stop()
    eventually(lambda: podman("healthcheck", "run", name, check=False).returncode != 0,
               "the probe fails while Redis is down")


def test_sigterm_drains_the_container(containers, redis):
    name, port = containers.node(redis.port)
    eventually(lambda: ready(port), "container node ready")

    async def client_sees_drain() -> tuple[int | None, str | None, float, subprocess.CompletedProcess]:
        async with connect(f"ws://127.0.0.1:{port}/websocket?channel_id=drain-room") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "connection"
            started = time.monotonic()
            # podman stop sends STOPSIGNAL (SIGTERM) and waits up to -t seconds
            # before SIGKILL.
            stop = asyncio.create_task(asyncio.to_thread(
                podman, "stop", "-t", str(DRAIN_SECONDS * 5), name, timeout=120))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), DRAIN_SECONDS * 5)
            except Exception:
                pass
            stopped = await stop
            return ws.close_code, ws.close_reason, time.monotonic() - started, stopped

    code, reason, elapsed, _ = asyncio.run(client_sees_drain())
    assert (code, reason) == (1012, "reconnect"), (code, reason, containers.logs(name))
    state = inspect(name)["State"]
    assert state["ExitCode"] == 0, (state, containers.logs(name))
    # Exited by itself once its client was gone: within the drain window, long
    # before podman's SIGKILL deadline.
    assert elapsed < DRAIN_SECONDS + 5, elapsed
    logs = containers.logs(name)
    assert '"drain finished"' in logs or "drain finished" in logs, logs


def test_three_containers_and_redis_pass_a_smoke_test(containers, redis):
    nodes = [containers.node(redis.port) for _ in range(3)]
    ports = [port for _, port in nodes]
    for port in ports:
        eventually(lambda p=port: ready(p), f"container node :{port} ready")

    def members(port: int) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/nodes", headers={"X-API-Key": API_KEY})
        with urllib.request.urlopen(req, timeout=5) as r:
            return len(json.loads(r.read())["nodes"])

    for port in ports:
        eventually(lambda p=port: members(p) == 3, "every node sees the other two")

    async def smoke() -> None:
        subs = [await connect(f"ws://127.0.0.1:{p}/websocket?channel_id=smoke") for p in ports]
        for ws in subs:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection"

        async def until(ws, predicate):
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if predicate(frame):
                    return frame

        # A publish on node 1 reaches members on nodes 2 and 3 (the relay
        # subscribes as members join: retry until the first one lands).
        def publish(n: int):
            api_post(ports[0], "/api/notify/channels",
                     {"channel_ids": ["smoke"], "data": {"type": "smoke", "data": {"n": n}}})

        n = 0
        got = None
        deadline = time.monotonic() + 30
        while got is None and time.monotonic() < deadline:
            n += 1
            publish(n)
            try:
                got = await asyncio.wait_for(until(subs[1], lambda f: f.get("type") == "smoke"), 2)
            except asyncio.TimeoutError:
                got = None
        assert got is not None, "no cross-node delivery to node 2"
        frame = await until(subs[2], lambda f: f.get("type") == "smoke")
        assert frame["data"]["n"] >= 1
        # A member on node 3 publishes; the member on node 2 receives it.
        await subs[2].send(json.dumps({"type": "channel", "channel_ids": ["smoke"],
                                       "data": {"type": "from-3", "data": {"hello": "node2"}}}))
        frame = await until(subs[1], lambda f: f.get("type") == "from-3")
        assert frame["data"] == {"hello": "node2"}
        for ws in subs:
            await ws.close()

    asyncio.run(smoke())
