"""Command-line options and serving (uvicorn, uvloop/httptools when installed, no access log)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

from .config import EmulatorConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EmulatorConfig()
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port (see --port-file)")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument("--data-dir", help="persist state and file contents here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--time-factor", type=float, default=d.time_factor, help="emulated seconds per real second"
    )
    p.add_argument("--validating-seconds", type=float, default=d.validating_seconds)
    p.add_argument(
        "--processing-seconds",
        type=float,
        default=d.processing_seconds,
        help="emulated base processing time of a batch",
    )
    p.add_argument(
        "--per-request-seconds",
        type=float,
        default=d.per_request_seconds,
        help="emulated processing time added per request",
    )
    p.add_argument("--finalizing-seconds", type=float, default=d.finalizing_seconds)
    p.add_argument("--cancel-seconds", type=float, default=d.cancel_seconds)
    p.add_argument(
        "--outputs-at-finalize",
        action="store_true",
        help="OpenAI: write output files while the batch is finalizing, not on their first read",
    )
    p.add_argument(
        "--fault-rate",
        type=float,
        default=d.fault_rate,
        help="fraction of all /v1 calls answered with a random fault",
    )
    p.add_argument(
        "--fault-kinds",
        default=",".join(d.fault_kinds),
        help="kinds used by --fault-rate (429,429_long,quota,500,502,503,504,529,drop,reset)",
    )
    p.add_argument("--retry-after", type=float, default=d.retry_after, help="retry-after seconds on 429s")
    p.add_argument("--batch-faults", default="", help="per-batch directives applied to every batch")
    p.add_argument(
        "--item-recovery",
        type=float,
        default=d.item_recovery,
        help="chance that a resent request succeeds after a transient (429/5xx) item error",
    )
    p.add_argument("--faults", dest="faults_json", help="server-wide faults as JSON (as POST /_emu/faults)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any config field (see config.py), e.g. --set openai_max_requests=10",
    )
    p.add_argument(
        "--known-models",
        default=",".join(d.known_models),
        help="model ids served, comma-separated: 'catalog' (the package's known models), '*' (any) "
        "or exact ids; requests for others are refused as the real service does",
    )
    p.add_argument("--with-s3", action="store_true", help="start moto's S3 on loopback for Bedrock jobs")
    p.add_argument("--log-level", default=d.log_level)
    p.add_argument("--access-log", action="store_true")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    cfg = EmulatorConfig(
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        data_dir=args.data_dir,
        seed=args.seed,
        time_factor=args.time_factor,
        validating_seconds=args.validating_seconds,
        processing_seconds=args.processing_seconds,
        per_request_seconds=args.per_request_seconds,
        finalizing_seconds=args.finalizing_seconds,
        cancel_seconds=args.cancel_seconds,
        outputs_at_finalize=args.outputs_at_finalize,
        fault_rate=args.fault_rate,
        fault_kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()],
        retry_after=args.retry_after,
        batch_faults=args.batch_faults,
        item_recovery=args.item_recovery,
        faults_json=args.faults_json,
        log_level=args.log_level,
        access_log=args.access_log,
        known_models=[m.strip() for m in args.known_models.split(",") if m.strip()],
    )
    cfg.apply_overrides(args.set)
    if getattr(args, "with_s3", False):
        from .bedrock.s3 import start_local_s3

        print(f"moto S3 for Bedrock on {start_local_s3(args.host)[1]}", file=sys.stderr, flush=True)
    if cfg.faults_json:
        json.loads(cfg.faults_json)
    return cfg


def serve(cfg: EmulatorConfig) -> None:
    import uvicorn

    from .app import create_app

    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    cfg.port = port
    app = create_app(cfg)
    uv_config = uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        access_log=cfg.access_log,
        log_level=cfg.log_level,
        lifespan="on",
        timeout_keep_alive=30,
        backlog=2048,
    )
    server = uvicorn.Server(uv_config)
    if cfg.port_file:
        tmp = Path(cfg.port_file + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, cfg.port_file)
    print(f"batch-provider emulator listening on http://{cfg.host}:{port}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])


def main(argv: list[str] | None = None, prog: str = "python -m batch_provider.emulator") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Local emulator of the OpenAI and Anthropic batch APIs."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    serve(cfg)
    return 0
