"""`python -m crmsync.sandbox`: the same options as `crmsync sandbox`.

    python -m crmsync.sandbox --port 8900 --faults "hubspot:error_rate=0.2,latency_ms=50" \\
        --faults "brevo:burst_429=3" --no-rate-limits
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crmsync.sandbox.config import VENDORS, SandboxConfig, option_help, parse_faults
from crmsync.sandbox.server import serve


def _options_epilog() -> str:
    lines = ["fault/limit options per CRM (--faults CRM:key=value,...; CRM may be 'all'):"]
    for vendor in VENDORS:
        lines.append(f"  {vendor}:")
        lines += [f"    {name:24} {text}" for name, text in option_help(vendor).items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crmsync.sandbox",
        description="Local fakes of the Brevo, HubSpot, Mautic and n8n APIs.",
        epilog=_options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument(
        "--faults",
        action="append",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="e.g. hubspot:error_rate=0.2,latency_ms=50 (repeatable)",
    )
    parser.add_argument(
        "--no-rate-limits", action="store_true", help="turn every vendor rate limit off"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for injected faults")
    parser.add_argument(
        "--custom-fields",
        action="store_true",
        help="start with crmsync's custom fields (as after `crmsync setup`), not a fresh account",
    )
    # Used by SandboxServer(subprocess=True): an inherited listening socket and its config.
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config_json:
        config = SandboxConfig.from_json(args.config_json)
    else:
        specs = [spec for group in args.faults for spec in group]
        try:
            faults = parse_faults(specs)
        except ValueError as exc:
            parser.error(str(exc))
        config = SandboxConfig(
            seed=args.seed,
            faults=faults,
            no_rate_limits=args.no_rate_limits,
            custom_fields=args.custom_fields,
        )
    try:
        serve(args.host, args.port, config, fd=args.fd, quiet=args.quiet)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
