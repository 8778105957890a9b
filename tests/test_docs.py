"""The documents' links and the result folders they cite exist, so a reader who follows a figure
to its logs finds them (the folders are named by hand, session by session)."""
import functools
import itertools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", "docs/RESULTS.md", "docs/BENCHMARKS.md")


@functools.lru_cache(maxsize=None)  # each link into a document asks again
def headings(path):
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    with open(path, encoding="utf-8") as f:
        titles = [m.group(1) for m in map(re.compile(r"#+\s+(.*)").match, f) if m]
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in titles}


def brace_expansions(path):
    """'a/seed{1,2}/' -> ['a/seed1/', 'a/seed2/'], as the shell expands it."""
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[part] if i % 2 == 0 else part.split(",") for i, part in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def broken_links(source):
    """Relative Markdown links in source whose file, or heading after '#', does not exist."""
    with open(source, encoding="utf-8") as f:
        links = re.findall(r"\]\(([^)\s]+)\)", f.read())
    broken = []
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(source), path)) if path else source
        if not os.path.exists(target) or (anchor and target.endswith(".md") and anchor not in headings(target)):
            broken.append(link)
    return links, broken


def missing_citations(source, root=ROOT):
    """Repository paths quoted in backticks (`docs/...`, `benchmarks/...`, `tests/...`) that do not exist
    under root; placeholders (<run>, *) are skipped, {a,b} is expanded."""
    with open(source, encoding="utf-8") as f:
        cited = set(re.findall(r"`((?:docs|benchmarks|tests)/[^`\s]*)`", f.read()))
    return cited, [path for citation in cited if "<" not in citation and "*" not in citation
                   for path in brace_expansions(citation) if not os.path.exists(os.path.join(root, path))]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_reach_a_file_and_heading(document):
    links, broken = broken_links(os.path.join(ROOT, document))
    assert not broken, broken
    assert links or document != "README.md"  # the README links to its results: the pattern must see them


@pytest.mark.parametrize("document", DOCUMENTS)
def test_cited_repository_paths_exist(document):
    cited, missing = missing_citations(os.path.join(ROOT, document))
    assert cited and not missing, missing


def test_the_checks_catch_a_broken_link_and_a_missing_folder(tmp_path):
    (tmp_path / "docs" / "results" / "run" / "seed1").mkdir(parents=True)
    page = tmp_path / "page.md"
    page.write_text("## Session 17: the whole model as one graph (`training.compile=on`)\n"
                    "[ok](#session-17-the-whole-model-as-one-graph-trainingcompileon) [gone](#session-18) [no file](docs/x.md)\n"
                    "logs: `docs/results/run/seed{1,2}/`\n")
    assert broken_links(str(page))[1] == ["#session-18", "docs/x.md"]
    assert missing_citations(str(page), root=str(tmp_path))[1] == ["docs/results/run/seed2/"]
