"""Build the English word2vec benchmark corpus from Debian packages (DESIGN.md section 7).

    python bench/build_word2vec_corpus.py --out /tmp/w2v_corpus.txt [--work /tmp/w2v_debs] [--packages ...]

Downloads each package with `apt-get download` (no root needed), unpacks it with `dpkg-deb -x`, pulls
the English text out of its files (dictd databases, HTML, reStructuredText, POD, plain text), and
writes one paragraph per line as lower-cased tokens (letters, with inner apostrophes) to --out,
atomically. About 18M tokens with the default packages. Never commit the corpus.
"""

from __future__ import annotations

import argparse
import gzip
import html
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ["dict-gcide", "dict-wn", "linux-doc-6.1", "python3.11-doc", "perl-doc", "dict-foldoc", "fortunes",
            "debian-handbook"]

TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*")
TAG = re.compile(r"<script.*?</script>|<style.*?</style>|<[^>]+>", re.S | re.I)
PARAGRAPH = re.compile(r"\n\s*\n")
TEXT_SUFFIXES = {".txt", ".rst", ".pod", ".pm", ".pl", ""}


def fetch(package: str, work: Path) -> Path:
    """Download and unpack `package` under work/<package>/ (skipped when already there)."""
    root = work / package
    if root.is_dir() and any(root.iterdir()):
        return root
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=work, check=True, stdout=subprocess.DEVNULL)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"{package}: apt-get download produced no .deb in {work}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return root


def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in (".gz", ".dz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return ""
    return data.decode("utf-8", errors="replace")


def _wanted(path: Path, package: str) -> bool:
    """Which files of a package hold its English prose (each document once, not its HTML and its source)."""
    name, where = path.name.lower(), str(path)
    if package.startswith("dict-"):
        return name.endswith((".dict.dz", ".dict"))
    if package == "fortunes":
        return "/fortunes/" in where and path.suffix in ("", ".u8")
    if package.startswith("linux-doc"):
        return "/Documentation/" in where and name.endswith((".rst.gz", ".txt.gz", ".rst", ".txt"))
    if package.startswith("python3") and package.endswith("-doc"):
        return "/_sources/" in where and name.endswith(".txt")
    if package == "debian-handbook":
        return "/en-US/" in where and name.endswith(".html")
    if package == "perl-doc":
        return name.endswith((".pod", ".pod.gz"))
    if name.endswith((".html", ".htm")):
        return True
    return path.suffix in TEXT_SUFFIXES or name.endswith((".txt.gz", ".rst.gz", ".pod.gz"))


def texts(root: Path, package: str) -> Iterator[str]:
    """The English text of the package's documents, one document at a time."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if not _wanted(path, package) or path.stat().st_size > 50 << 20:
            continue
        text = _read(path)
        if path.name.lower().endswith((".html", ".htm")):
            text = html.unescape(TAG.sub(" ", text))
        if package == "fortunes":
            text = text.replace("\n%\n", "\n\n")
        yield text


def paragraphs(text: str, max_tokens: int = 1000) -> Iterator[str]:
    """Paragraphs (blank-line separated) as token lines; a paragraph over max_tokens (a dictionary
    database without blank lines, a table) is split into its lines instead."""
    for para in PARAGRAPH.split(text):
        tokens = TOKEN.findall(para.lower())
        if len(tokens) > max_tokens:
            for line in para.splitlines():
                line_tokens = TOKEN.findall(line.lower())
                if len(line_tokens) >= 3:
                    yield " ".join(line_tokens)
        elif len(tokens) >= 3:
            yield " ".join(tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus file to write (one paragraph per line)")
    parser.add_argument("--work", default="/tmp/w2v_debs", help="download/unpack folder")
    parser.add_argument("--packages", nargs="+", default=PACKAGES)
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    total = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for package in args.packages:
            root = fetch(package, work)
            count = 0
            for text in texts(root, package):
                for line in paragraphs(text):
                    f.write(line + "\n")
                    count += line.count(" ") + 1
            print(f"{package}: {count:,} tokens", file=sys.stderr)
            total += count
    tmp.replace(out)
    print(f"wrote {out}: {total:,} tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
