#!/usr/bin/env python3
"""Writes the C API reference (docs/api.md) from the doc comments of include/tokio_bridge.h.

    python3 scripts/api_docs.py            regenerate docs/api.md (also: make docs)
    python3 scripts/api_docs.py --check    fail if docs/api.md is not what would be generated

Every macro, type, struct field and function of the header must have a `/** ... */` doc
comment right before it: the script lists those that lack one and exits with status 1. A line
it does not recognise is an error too, so that nothing is left out of the reference silently.
Python 3 standard library only.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lines that carry no API item: the include guard's #ifndef and #endif, includes, and the
# extern "C" block around the functions.
STRUCTURE = re.compile(
    r'^(#\s*(ifndef|ifdef|if|endif|include)\b.*|extern "C" \{|\}\s*// extern "C")$'
)
DEFINE = re.compile(r"^#\s*define\s+(\w+)\s*(.*)$")
FUNCTION_POINTER = re.compile(r"\(\s*\*\s*(\w+)\s*\)\s*\(")
LAST_NAME = re.compile(r"(\w+)\s*(\[[^\]]*\])?\s*(=[^;]*)?;$")
FUNCTION_NAME = re.compile(r"(\w+)\s*\(")


class Item:
    """One documented declaration: a macro, a type or a function."""

    def __init__(self, kind, name, code, doc, fields=()):
        self.kind = kind
        self.name = name
        self.code = code
        self.doc = doc
        self.fields = list(fields)


def doc_text(comment_lines):
    """The text of a `/** ... */` comment, without its delimiters and leading ` * `."""
    text = []
    for line in comment_lines:
        line = line.strip()
        line = re.sub(r"^/\*\*\s?", "", line)
        line = re.sub(r"\s*\*/$", "", line)
        line = re.sub(r"^\*( |$)", "", line)
        text.append(line)
    while text and not text[0]:
        text.pop(0)
    while text and not text[-1]:
        text.pop()
    return "\n".join(text)


def read_comment(lines, i):
    """Returns (comment lines, index after the comment) for a comment starting at lines[i]."""
    start = i
    while "*/" not in lines[i]:
        i += 1
    return lines[start : i + 1], i + 1


def read_statement(lines, i):
    """Returns (statement lines, index after it): up to a `;` outside braces."""
    start, depth = i, 0
    while True:
        depth += lines[i].count("{") - lines[i].count("}")
        if depth == 0 and lines[i].rstrip().endswith(";"):
            return lines[start : i + 1], i + 1
        i += 1
        if i == len(lines):
            raise SystemExit(f"line {start + 1}: unterminated declaration")


def parse_fields(body, first_line, problems):
    """The (declaration, doc) of each field in a struct body; records fields without docs."""
    fields, doc, i = [], None, 0
    while i < len(body):
        stripped = body[i].strip()
        if stripped.startswith("/**"):
            comment, i = read_comment(body, i)
            doc = doc_text(comment)
            continue
        if stripped:
            if doc is None:
                problems.append(f"line {first_line + i}: field `{stripped}` has no doc comment")
            fields.append((stripped.rstrip(";"), doc or ""))
            doc = None
        i += 1
    return fields


def declaration_kind(code):
    """The kind of item a declaration is, and the name it introduces."""
    flat = " ".join(code.split())
    pointer = FUNCTION_POINTER.search(flat)
    if flat.startswith("typedef"):
        return "type", pointer.group(1) if pointer else LAST_NAME.search(flat).group(1)
    if "(" in flat and not pointer:
        return "function", FUNCTION_NAME.search(flat).group(1)
    return "variable", pointer.group(1) if pointer else LAST_NAME.search(flat).group(1)


def parse(header):
    """Returns (file doc, items, problems) for the header's text."""
    lines = header.splitlines()
    file_doc, items, problems = "", [], []
    doc, guard, i = None, None, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        number = i + 1
        if not stripped:
            i += 1
            continue
        if stripped.startswith("/**"):
            comment, i = read_comment(lines, i)
            text = doc_text(comment)
            if "@file" in text:
                file_doc = "\n".join(
                    re.sub(r"^@brief\s+", "", t) for t in text.splitlines() if "@file" not in t
                )
            else:
                doc = text
            continue
        if stripped.startswith("/*"):
            _, i = read_comment(lines, i)
            continue
        guard_match = re.match(r"^#\s*ifndef\s+(\w+)$", stripped)
        if guard is None and guard_match:
            guard = guard_match.group(1)
        define = DEFINE.match(stripped)
        if define and define.group(1) == guard:
            i += 1
            continue
        if STRUCTURE.match(stripped):
            doc = None  # a doc comment documents the line right after it, or nothing
            i += 1
            continue
        if define:
            item = Item("macro", define.group(1), stripped, doc)
            i += 1
        elif stripped.startswith("typedef") or stripped.endswith((";", ",", "(")):
            statement, i = read_statement(lines, i)
            code = "\n".join(statement)
            fields = []
            if "{" in code:
                body = statement[1:-1] if statement[0].rstrip().endswith("{") else []
                fields = parse_fields(body, number + 1, problems)
                code = "\n".join(
                    [statement[0]] + [f"  {f};" for f, _ in fields] + [statement[-1]]
                )
            item = Item(*declaration_kind(code), code, doc, fields)
        else:
            raise SystemExit(f"line {number}: not understood: {stripped}")
        if item.doc is None:
            problems.append(f"line {number}: {item.kind} `{item.name}` has no doc comment")
        items.append(item)
        doc = None
    return file_doc, items, problems


SECTIONS = [
    ("macro", "Macros"),
    ("type", "Types"),
    ("variable", "Variables"),
    ("function", "Functions"),
]


def render(header_name, file_doc, items):
    """The Markdown reference."""
    out = [
        "# tokio-bridge C API reference",
        "",
        f"Generated by `scripts/api_docs.py` from the doc comments of `{header_name}`; do not edit.",
        "To change it, change the Rust doc comments, regenerate the header",
        "(`TB_UPDATE_HEADER=1 cargo build`), then run `make docs`.",
        "",
        *([file_doc, ""] if file_doc else []),
        "## Contents",
        "",
    ]
    sections = [
        (title, [it for it in items if it.kind == kind]) for kind, title in SECTIONS
    ]
    sections = [(title, members) for title, members in sections if members]
    # GitHub's heading anchors: the lower-cased name, then -1, -2... for a name seen before
    # (TB_VERSION_STRING, then tb_version_string).
    anchors, seen = {}, {}
    for _, members in sections:
        for item in members:
            slug = item.name.lower()
            anchors[id(item)] = slug + (f"-{seen[slug]}" if slug in seen else "")
            seen[slug] = seen.get(slug, 0) + 1
    for title, members in sections:
        names = [f"[`{it.name}`](#{anchors[id(it)]})" for it in members]
        out += [f"**{title}:** " + ", ".join(names), ""]
    for title, members in sections:
        out += [f"## {title}", ""]
        for item in members:
            out += [f"### `{item.name}`", "", "```c", item.code, "```", "", item.doc, ""]
            if item.fields:
                out += ["Fields:", ""]
                out += [f"- `{decl}`: " + " ".join(doc.split()) for decl, doc in item.fields]
                out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--header", type=Path, default=ROOT / "include" / "tokio_bridge.h")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "api.md")
    parser.add_argument(
        "--check", action="store_true", help="compare with --output instead of writing it"
    )
    args = parser.parse_args()
    file_doc, items, problems = parse(args.header.read_text())
    if problems:
        print(f"{args.header}: items without a doc comment:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    header = args.header.resolve()
    text = render(header.relative_to(ROOT) if header.is_relative_to(ROOT) else header.name, file_doc, items)
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(
                f"{args.output} is not up to date with {args.header}: run `make docs` "
                "(python3 scripts/api_docs.py) and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
