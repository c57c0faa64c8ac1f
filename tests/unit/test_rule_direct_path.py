"""Plain value rules take a direct path in `Rule.results` (no input generator); on every message of the
corpus, and on the sites' overrides, the translation is the same as through the general path: resources,
problems, what was read and what was left unmapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.hl7v2 import rules
from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import TranslationError, Translator
from gateway.mapping.files import load
from gateway.settings import PROJECT_ROOT
from tests.conftest import CORPUS

MESSAGES = sorted(p for p in (CORPUS / "hl7v2").rglob("*") if p.suffix in (".hl7", ".txt") and p.is_file())


def _outcome(translator: Translator, path: Path) -> Any:
    try:
        translation = translator.translate(Message(path.read_text(encoding="utf-8", errors="replace")))
    except TranslationError as exc:
        return ("refused", exc.ack, exc.text)
    except Exception as exc:  # what the general path raises, the direct one must raise too
        return ("raised", type(exc).__name__)
    return (
        [(p.resource, p.mode) for p in translation.resources],
        translation.problems,
        translation.unused,
        translation.unmapped,
    )


def test_the_corpus_translates_the_same_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(MESSAGES) >= 40, f"no HL7 v2 corpus under {CORPUS}"
    direct = Translator(load(PROJECT_ROOT / "mappings"))
    assert sum(r._plain for m in direct._base.values() for e in m.elements for r in e.rules) > 50
    expected = {}
    with monkeypatch.context() as patch:
        patch.setattr(rules.Rule, "_first_value", None)  # any use of the direct path would fail
        general = Translator(load(PROJECT_ROOT / "mappings"))
        for mapping in general._base.values():
            for element in mapping.elements:
                for rule in element.rules:
                    rule._plain = False
        for site in general._per_site.values():
            for mapping in site.values():
                for element in mapping.elements:
                    for rule in element.rules:
                        rule._plain = False
        expected = {str(path): _outcome(general, path) for path in MESSAGES}
    translated = {str(path): _outcome(direct, path) for path in MESSAGES}
    assert translated == expected
    assert (
        sum(1 for o in expected.values() if isinstance(o, tuple) and o[0] in ("refused", "raised"))
        < len(MESSAGES) // 2
    )
