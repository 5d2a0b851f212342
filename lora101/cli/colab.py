"""``lora101 colab sync``: point every notebook's Colab set-up cell and badge at one repository
(``lora101.colab.sync``)."""

from __future__ import annotations

from pathlib import Path

from lora101.colab import BRANCH, REPO_SLUG, sync, written_address


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "colab", help="point every notebook's Colab set-up cell and badge at this repository (or a fork)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub = actions.add_parser(
        "sync",
        help="rewrite the set-up cells, Colab/Binder badges and lora101/colab.py to one address",
        description="Rewrite every course notebook's first code cell and its 'Open in Colab' badge, the README's "
        "badges and REPO_SLUG/BRANCH in lora101/colab.py, so that all name one repository. Run it in a clone "
        "of a fork, then commit: learners opening the fork's notebooks on Colab install the fork.",
    )
    sub.add_argument("--repo", help=f"GitHub OWNER/NAME of the course (default: {REPO_SLUG})")
    sub.add_argument("--branch", help=f"the branch learners install from (default: {BRANCH})")
    sub.add_argument("--root", default=".", help="the repository's folder (default: the current folder)")
    sub.set_defaults(func=_run_sync)


def _run_sync(args) -> int:
    changed = sync(args.root, args.repo, args.branch)
    for path in changed:
        print(f"rewrote {path}")
    slug, branch = written_address(Path(args.root) / "lora101" / "colab.py")
    print(f"{len(changed)} file(s) changed; every notebook installs from github.com/{slug}@{branch}")
    return 0
