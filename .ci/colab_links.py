"""Writes the repository's URL into every notebook in colabs/: an "Open in Colab" badge under its title and the
default PACKAGE of its setup cell, both from `[project.urls] Repository` in pyproject.toml (the one place to change
when the repository moves).

  python .ci/colab_links.py          rewrite the notebooks
  python .ci/colab_links.py --check  exit 1, naming them, when a notebook is out of date (tests/test_colabs.py)
"""
import json
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository() -> str:
  urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
  if "Repository" not in urls:
    sys.exit("FATAL: pyproject.toml has no [project.urls] Repository = \"https://github.com/<owner>/<repo>\"")
  return urls["Repository"].rstrip("/").removesuffix(".git")


def badge_line(repo: str, name: str) -> str:
  owner_repo = repo.split("github.com/", 1)[1]
  return f"[![Open In Colab]({BADGE})](https://colab.research.google.com/github/{owner_repo}/blob/main/colabs/{name})"


def linked(path: pathlib.Path, repo: str) -> str:
  """The notebook's JSON text with the badge and PACKAGE for `repo`."""
  nb = json.loads(path.read_text())
  md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
  lines = [l for l in "".join(md["source"]).split("\n") if not l.startswith("[![Open In Colab]")]
  lines.insert(1, badge_line(repo, path.name))  # Under the '# title' line.
  md["source"] = [l + "\n" for l in lines[:-1]] + [lines[-1]]
  setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
  text = re.sub(r'^PACKAGE = ".*"$', f'PACKAGE = "git+{repo}.git"', "".join(setup["source"]), count=1,
                flags=re.M)
  setup["source"] = text.splitlines(keepends=True)
  return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv) -> int:
  repo = repository()
  stale = []
  for path in sorted((ROOT / "colabs").glob("*.ipynb")):
    text = linked(path, repo)
    if text != path.read_text():
      stale.append(path.name)
      if "--check" not in argv:
        path.write_text(text)
  if stale and "--check" in argv:
    print(f"colabs/{', colabs/'.join(stale)}: badge or PACKAGE differ from pyproject.toml's Repository "
          f"({repo}); run python .ci/colab_links.py")
    return 1
  print(f"{len(stale)} notebook(s) rewritten for {repo}" if stale else f"every notebook is up to date for {repo}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
