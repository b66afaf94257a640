"""Generate docs/api.md, the API reference, from the docstrings of the public names.

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 when docs/api.md is out of date (tests/test_api_docs.py)

Public names are those in ``shitu_features.__all__`` and in the ``__all__`` of the modules listed in
:data:`MODULES`. Each object is documented once, in the most specific module that exports it; other mentions
link there. Google-style sections (``Args:``, ``Returns:``, ``Raises:``, ``Attributes:``, ``Example:``,
``Shape:``, ...) become Markdown; pydantic models get a table of their fields. The output depends only on the
source code (no addresses, no absolute paths), so it can be committed and checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = REPO_ROOT / "docs" / "api.md"

#: Documented modules, in page order. The top level comes first but documents only what no module below owns.
MODULES = [
    "shitu_features",
    "shitu_features.errors",
    "shitu_features.models",
    "shitu_features.losses",
    "shitu_features.evaluation",
    "shitu_features.data",
    "shitu_features.training",
]

#: Member names never documented on their own (framework hooks, documented by the class docstring).
SKIP_MEMBERS = {"extra_repr", "model_config", "model_fields", "model_computed_fields"}
SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Attributes|Example|Examples|Shape|"
                     r"Note|Notes|References|Warning|Warnings|Warns|See Also|Relations|Rules|Todo):\s*$")
ITEM_SECTIONS = {"Args", "Arguments", "Parameters", "Raises", "Attributes", "Warns"}
CODE_SECTIONS = {"Example", "Examples"}
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`~?([^`]+)`")
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _anchor(qualified: str) -> str:
    return qualified.replace(".", "-").replace("_", "-").lower()


def _clean(text: str) -> str:
    """reST roles -> code spans: ``:class:`~a.B``` -> ```B```; ``:func:`a.f``` -> ```a.f```."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return f"`{target.rsplit('.', 1)[-1] if match.group(0).count('~') else target}`"

    return ADDRESS.sub("", ROLE.sub(role, text))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence(lines: list[str]) -> list[str]:
    body = textwrap.dedent("\n".join(lines)).strip("\n")
    return ["```python", *body.splitlines(), "```"]


def _items(lines: list[str]) -> list[str]:
    """``name: text`` entries (continuation lines indented deeper) -> a Markdown list."""
    out: list[str] = []
    base = min((_indent(ln) for ln in lines if ln.strip()), default=0)
    for line in lines:
        if not line.strip():
            continue
        if _indent(line) == base:
            name, sep, rest = line.strip().partition(":")
            if sep and name and len(name) <= 100 and "`" not in name:
                out.append(f"- `{name.strip()}`: {rest.strip()}")
            else:
                out.append(f"- {line.strip()}")
        elif out:
            out[-1] += " " + line.strip()
        else:
            out.append(f"- {line.strip()}")
    return out


def docstring_to_markdown(doc: str) -> str:
    """A Google-style docstring as Markdown."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = SECTION.match(line)
        if match:
            name = match.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > 0):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            out += ["", f"**{name}**", ""]
            if name in ITEM_SECTIONS:
                out += _items(body)
            elif name in CODE_SECTIONS:
                out += _fence(body)
            else:
                out += textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            out.append("")
            continue
        if line.lstrip().startswith(">>>"):  # a doctest outside an Example section
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["", *_fence(block), ""]
            continue
        if line.rstrip().endswith("::") and i + 1 < len(lines):  # reST literal block
            out.append(line.rstrip()[:-1])
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > _indent(line)):
                block.append(lines[i])
                i += 1
            out += ["", *_fence(block), ""]
            continue
        out.append(line)
        i += 1
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return _clean(text)


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):  # postponed annotations (``from __future__ import annotations``): as written
        return annotation
    return ADDRESS.sub("", getattr(annotation, "__name__", None) or repr(annotation).replace("typing.", ""))


def _parameter(p: inspect.Parameter) -> str:
    kind = inspect.Parameter
    stars = "*" if p.kind is kind.VAR_POSITIONAL else "**" if p.kind is kind.VAR_KEYWORD else ""
    text = stars + p.name
    if p.annotation is not inspect.Parameter.empty:
        text += f": {_annotation(p.annotation)}"
    if p.default is not inspect.Parameter.empty:
        text += f" = {ADDRESS.sub('', repr(p.default))}" if p.annotation is not inspect.Parameter.empty \
            else f"={ADDRESS.sub('', repr(p.default))}"
    return text


def _signature(obj: Any, name: str) -> str:
    """``name(params) -> return`` as in source: one line, or one parameter per line when long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = list(sig.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    parts: list[str] = []
    star_done = False
    for k, p in enumerate(params):
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star_done:
            parts.append("*")
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_POSITIONAL):
            star_done = True
        parts.append(_parameter(p))
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and (
                k + 1 == len(params) or params[k + 1].kind is not inspect.Parameter.POSITIONAL_ONLY):
            parts.append("/")
    ret = "" if sig.return_annotation is inspect.Signature.empty else f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(parts)}){ret}"
    if len(one_line) <= 110:
        return one_line
    body = "".join(f"    {p},\n" for p in parts)
    return f"{name}(\n{body}){ret}"


def _own_doc(obj: Any) -> str:
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) else ""


def _is_pydantic(cls: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a core dependency
        return False
    return inspect.isclass(cls) and issubclass(cls, BaseModel)


def _annotation_text(cls: Any, field: str) -> str:
    for klass in cls.__mro__:
        ann = vars(klass).get("__annotations__", {})
        if field in ann:
            return str(ann[field]) if isinstance(ann[field], str) else getattr(ann[field], "__name__", str(ann[field]))
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pydantic_fields(cls: Any) -> list[str]:
    from pydantic_core import PydanticUndefined

    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, info in cls.model_fields.items():
        if info.default_factory is not None:
            factory = info.default_factory
            if factory in (list, dict, tuple, set):
                default = repr(factory())  # type: ignore[operator]
            elif inspect.isclass(factory):
                default = f"{factory.__name__}()"
            else:
                default = repr(factory())  # type: ignore[call-arg]
        elif info.default is PydanticUndefined:
            default = "required"
        else:
            default = repr(info.default)
        default = ADDRESS.sub("", default)
        if len(default) > 70:
            default = default[:67] + "..."
        rows.append(f"| `{name}` | `{_cell(_annotation_text(cls, name))}` | `{_cell(default)}` | "
                    f"{_cell(_clean(info.description or ''))} |")
    return rows


def _members(cls: Any) -> Iterator[tuple[str, str, Any]]:
    """Public members defined by ``cls`` itself: (name, kind, function or property)."""
    pydantic = _is_pydantic(cls)
    fields = set(cls.model_fields) if pydantic else set()
    for name, value in vars(cls).items():
        if name.startswith("_") or name in SKIP_MEMBERS or name in fields:
            continue
        if isinstance(value, property):
            yield name, "property", value
        elif isinstance(value, classmethod):
            yield name, "classmethod", value.__func__
        elif isinstance(value, staticmethod):
            yield name, "staticmethod", value.__func__
        elif inspect.isfunction(value) and not (name == "forward" and not value.__doc__):
            yield name, "method", value


def _class_name(cls: type) -> str:
    """Where a user would import ``cls`` from: ``ValueError``, ``paddle.nn.Layer``, ``shitu_features.x.Y``."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    if cls.__module__.startswith("paddle.nn."):
        import paddle

        if getattr(paddle.nn, cls.__name__, None) is cls:
            return f"paddle.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _document_class(qualified: str, cls: Any, level: str) -> list[str]:
    out = [f'<a id="{_anchor(qualified)}"></a>', "", f"{level} `{qualified}`", ""]
    bases = [b for b in cls.__bases__ if b is not object]
    base_text = ", ".join(_class_name(b) for b in bases)
    is_dataclass = dataclasses.is_dataclass(cls)
    if _is_pydantic(cls):
        config = getattr(cls, "model_config", {})
        flags = [text for key, value, text in (("frozen", True, "frozen"), ("extra", "forbid", "unknown keys rejected"))
                 if config.get(key) == value]
        out += [f"*pydantic model*{' (' + ', '.join(flags) + ')' if flags else ''}", ""]
    elif issubclass(cls, BaseException):
        out += ["```python", f"class {cls.__name__}({', '.join(b.__name__ for b in bases)})", "```", ""]
    else:
        decorator = ["@dataclass"] if is_dataclass else []
        out += ["```python", *decorator, f"class {_signature(cls, cls.__name__).removesuffix(' -> None')}", "```", ""]
        if base_text:
            out += [f"Bases: `{base_text}`", ""]
    out += [docstring_to_markdown(_own_doc(cls)) or "*(no docstring)*", ""]
    if _is_pydantic(cls):
        out += _pydantic_fields(cls) + [""]
    members = list(_members(cls))
    properties = [(name, member) for name, kind, member in members if kind == "property"]
    if properties:
        out += ["**Properties**", ""]
        out += [f"- `{name}`: {_one_paragraph(member.__doc__)}" for name, member in properties]
        out.append("")
    for name, kind, member in members:
        if kind == "property":
            continue
        prefix = "" if kind == "method" else f"*{kind}* "
        out += ["", f"#### {prefix}`{cls.__name__}.{name}`", "", "```python",
                _signature(member, name), "```", "", docstring_to_markdown(member.__doc__ or "") or "*(no docstring)*"]
    out.append("")
    return out


def _one_paragraph(doc: str | None) -> str:
    if not doc:
        return "*(no docstring)*"
    return " ".join(docstring_to_markdown(doc).split("\n\n")[0].split())


def _document_function(qualified: str, fn: Any, level: str) -> list[str]:
    name = qualified.rsplit(".", 1)[-1]
    return [f'<a id="{_anchor(qualified)}"></a>', "", f"{level} `{qualified}`", "", "```python",
            _signature(fn, name), "```", "", docstring_to_markdown(_own_doc(fn)) or "*(no docstring)*", ""]


def _document_data(qualified: str, value: Any, level: str) -> list[str]:
    if isinstance(value, dict):
        keys = ", ".join(f"`{k}`" for k in value)
        kinds = {getattr(v, "__name__", type(v).__name__) for v in value.values()}
        text = f"`dict` registry, {len(value)} entries: {keys}." + (
            "" if len(kinds) > 12 else "")
    elif isinstance(value, (tuple, list, frozenset, set)):
        text = f"`{type(value).__name__}`: `{value!r}`"
    else:
        text = f"`{type(value).__name__}`: `{value!r}`"
    return [f'<a id="{_anchor(qualified)}"></a>', "", f"{level} `{qualified}`", "", ADDRESS.sub("", text), ""]


def _homes() -> dict[int, str]:
    """id(object) -> the qualified name it is documented under (the last, i.e. most specific, module)."""
    homes: dict[int, str] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            homes[id(obj)] = f"{module_name}.{name}"
    return homes


def render() -> str:
    """The whole of docs/api.md."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import shitu_features

        homes = _homes()
    out = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the docstrings. Do not edit by hand: run",
        "     `python scripts/gen_api_docs.py` after changing a public docstring or signature. -->",
        "",
        f"shitu-features {shitu_features.__version__}. Every public name: `shitu_features.__all__` and the public "
        "modules below. Shapes are written `[N, 512]`; images are `uint8`, embeddings `float32` unless stated. "
        "Guides: [index](index.md).",
        "",
        "| module | contents |",
        "|---|---|",
    ]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        summary = _one_paragraph(module.__doc__).split(". ")[0].rstrip(".")
        out.append(f"| [`{module_name}`](#{_anchor(module_name)}) | {_cell(summary)} |")
    out.append("")
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        out += [f'<a id="{_anchor(module_name)}"></a>', "", f"## `{module_name}`", "",
                docstring_to_markdown(module.__doc__ or ""), ""]
        links: list[str] = []
        for name in module.__all__:
            qualified = f"{module_name}.{name}"
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                target = obj.__name__
                links.append(f"- `{name}`: module [`{target}`](#{_anchor(target)})" if target in MODULES else
                             f"- `{name}`: module `{target}`")
                continue
            home = homes.get(id(obj), qualified)
            if home != qualified:
                links.append(f"- `{name}`: see [`{home}`](#{_anchor(home)})")
                continue
            if inspect.isclass(obj):
                out += _document_class(qualified, obj, "###")
            elif callable(obj):
                out += _document_function(qualified, obj, "###")
            else:
                out += _document_data(qualified, obj, "###")
        if links:
            out += ["**Also exported here:**", "", *links, ""]
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/api.md instead of writing it")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "committed", "generated", lineterm="")
            print("\n".join(list(diff)[:60]))
            print(f"\n{args.output} is out of date: run `python scripts/gen_api_docs.py`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
