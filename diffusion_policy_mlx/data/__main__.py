"""``python -m diffusion_policy_mlx.data {download,verify} NAME [--root data] [--url URL]``."""

import argparse
import sys
from pathlib import Path

from diffusion_policy_mlx.data.download import download, get_spec, verify
from diffusion_policy_mlx.data.registry import DATASETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_policy_mlx.data",
        description="Fetch and check the datasets upstream publishes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="download, verify and unpack a dataset")
    check = commands.add_parser("verify", help="check a dataset in place against its digests")
    for sub in (get, check):
        sub.add_argument("name", choices=sorted(DATASETS), help="dataset to act on")
        sub.add_argument(
            "--root", type=Path, default=Path("data"), help="data folder (default: data)"
        )
    get.add_argument("--url", help="download from this address instead of the published one")
    get.add_argument("--force", action="store_true", help="replace a dataset already in place")
    get.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    spec = get_spec(args.name)
    if args.command == "download":
        try:
            download(spec, root=args.root, url=args.url, force=args.force, progress=not args.quiet)
        except (OSError, ValueError) as e:
            # the network, the disk or the archive: one line that says what failed and the way
            # around it, instead of a traceback (nothing is left behind; download() cleans up)
            print(
                f"{parser.prog}: downloading {spec.name} failed: {e} {spec.place_by_hand(args.root)}",
                file=sys.stderr,
            )
            return 1
        return 0
    path = args.root / spec.path
    if not path.exists():
        parser.error(f"{path} does not exist; fetch it with `{spec.download_command(args.root)}`.")
    verify(path, spec)
    print(f"{path} matches the published {spec.name} dataset.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
