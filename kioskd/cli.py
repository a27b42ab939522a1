"""``kioskd`` command line: run | demo | check-config | devices | wake-test | status | sim.

Each subcommand imports its own module only when chosen, so ``check-config`` stays fast and a broken
optional part (say, no PortAudio) never stops the others. Bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kioskd import __version__
from kioskd.config import DEFAULT_CONFIG_PATH, load_or_exit, render_effective

EX_USAGE = 64


def _check_config(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    print(render_effective(settings), end="")
    return 0


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), func)
        return handler(args)

    return call


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kioskd", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"kioskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None,
                       help=f"TOML configuration (default {DEFAULT_CONFIG_PATH}; missing means defaults)")
        return p

    p = with_config(sub.add_parser("run", help="run the daemon (listen, wake, converse)"))
    p.set_defaults(func=_lazy("kioskd.daemon", "cli_run"))

    p = with_config(sub.add_parser("demo", help="a whole conversation with no sound card and no Azure account"))
    p.add_argument("--input", type=Path, default=None,
                   help="speech WAV to feed as the microphone (default: generated with espeak-ng)")
    p.add_argument("--output", type=Path, default=Path("kioskd-demo-speaker.wav"),
                   help="where to write what the speaker played (default: %(default)s)")
    p.set_defaults(func=_lazy("kioskd.demo", "cli_demo"))

    p = with_config(sub.add_parser("check-config", help="validate the configuration and print it, secrets masked"))
    p.set_defaults(func=_check_config)

    p = with_config(sub.add_parser("devices", help="list audio devices, marking the configured ones"))
    p.set_defaults(func=_lazy("kioskd.audio.devices", "cli_devices"))

    p = with_config(sub.add_parser("wake-test", help="run a WAV through the wake-word detector"))
    p.add_argument("wav", type=Path)
    p.add_argument("--model", action="append", default=None, help="model name or .onnx path (repeatable)")
    p.add_argument("--threshold", type=float, default=None)
    p.set_defaults(func=_lazy("kioskd.wake", "cli_wake_test"))

    p = with_config(sub.add_parser("status", help="print the running daemon's /status; non-zero when not ready"))
    p.add_argument("--url", default=None, help="base URL of the health endpoint (default from the config)")
    p.set_defaults(func=_lazy("kioskd.health", "cli_status"))

    p = sub.add_parser("sim", help="run the bundled realtime simulator on 127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default: %(default)s)")
    p.add_argument("--api-key", default=None, help="accept only this key (default: any key)")
    p.set_defaults(func=_lazy("kioskd.sim.server", "cli_sim"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
