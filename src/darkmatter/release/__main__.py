"""``python -m darkmatter.release {publish,pull,bundle,import,paper}``: a thin CLI over the release modules."""

from __future__ import annotations

import argparse
from pathlib import Path

from darkmatter.errors import cli
from darkmatter.release.bundle import import_bundle, write_bundle
from darkmatter.release.paper import arxiv_tarball, citation_cff
from darkmatter.release.remote import publish, pull


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m darkmatter.release", description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the clone (default: here)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="write what dvc.lock references as a static DVC remote tree")
    p.add_argument("target", type=Path, help="directory to upload to a static host (the reviewers remote's URL)")
    p = sub.add_parser("pull", help="dvc pull from a remote, failing with one line if it is unreachable")
    p.add_argument("-r", "--remote", default="reviewers")
    p.add_argument("targets", nargs="*", help="dvc pull targets (default: everything)")
    p = sub.add_parser("bundle", help="one checksummed archive of what dvc.lock references")
    p.add_argument("archive", type=Path)
    p = sub.add_parser("import", help="verify a bundle, copy it into .dvc/cache, dvc checkout")
    p.add_argument("archive", type=Path)
    p.add_argument("--sha256", help="expected checksum (default: the .sha256 file beside the archive)")
    p = sub.add_parser("paper", help="the arXiv source tarball and CITATION.cff")
    p.add_argument("out", type=Path, help="where to write darkmatter-arxiv.tar.gz")
    args = parser.parse_args(argv)

    if args.command == "publish":
        print(f"published {publish(args.repo, args.target)} objects to {args.target}")
    elif args.command == "pull":
        pull(args.repo, args.remote, args.targets)
    elif args.command == "bundle":
        checksum = write_bundle(args.repo, args.archive)
        print(f"wrote {args.archive} and {checksum.name}: {checksum.read_text().split()[0]}")
    elif args.command == "paper":
        from darkmatter.config import load_params

        tarball = args.out / "darkmatter-arxiv.tar.gz"
        names = arxiv_tarball(args.repo, tarball, load_params(args.repo / "params.yaml").main_run)
        (args.repo / "CITATION.cff").write_text(citation_cff(args.repo))
        print(f"wrote {tarball} ({len(names)} files) and {args.repo / 'CITATION.cff'}")
    else:
        print(f"imported {import_bundle(args.repo, args.archive, args.sha256)} objects; dvc status should be clean")


if __name__ == "__main__":
    main()
