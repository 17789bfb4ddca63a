"""Make pydoc_qa_calib.json and pydoc_qa_eval.json: SQuAD v1.1-format question/passage pairs over real English.

The passages are the prose of the documentation topics that ship with Python (``pydoc_data.topics``), cut
into passages of about 200 words (120–300); the questions are made from the passages' own sentences ("What is X?",
"What is X used for?", "What does X return?", and fill-in-the-blank questions on quoted names), so every
answer is a span of its passage with its exact answer_start. Passages alternate between the two files,
so the two share no text.

Deterministic: running it again on the same Python version writes byte-identical files.

    python calibrate/data/make_pydoc_qa.py [OUT_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydoc_data.topics import topics

MIN_WORDS, TARGET_WORDS, MAX_WORDS = 120, 200, 300
QUESTIONS_PER_PASSAGE = 3
MAX_ANSWER_WORDS = 12
FILES = ("pydoc_qa_calib.json", "pydoc_qa_eval.json")

_UNDERLINE = re.compile(r"^\s*([*=\-^~#])\1{2,}\s*$")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
_VERSION_NOTES = ("Changed in version", "Added in version", "New in version", "Deprecated since")
# Words that start a clause or an adverbial rather than a noun phrase: no "What is <subject>?" from these.
_NOT_SUBJECT = set("""it this these that those there they he she which what each such here all both one some
most many any if when otherwise because although though while since unless as for in however anything everything
note also then thus so but and or once after before until whether where with without on at by from to of under
like unlike instead even only not should must may can will called see return returns raise nor below above
formally""".split())
_PROPER = {"Python", "CPython", "Unicode", "PEP", "ASCII", "IEEE", "UTF-8"}


def prose_blocks(text: str) -> list[str]:
    """The topic's paragraphs of running prose, each on one line; headings, code, grammar and lists dropped."""
    blocks, current = [], []
    for line in text.split("\n") + [""]:
        if line.strip():
            current.append(line)
            continue
        if current:
            blocks.append(current)
            current = []
    out = []
    for lines in blocks:
        if any(_UNDERLINE.match(line) for line in lines):
            continue  # a heading
        first = lines[0].strip()
        if first.startswith(("*", "-", "+", ">>>", "|")) or "::=" in first:
            continue  # a list item, a table or a grammar rule
        indents = {len(line) - len(line.lstrip()) for line in lines}
        if len(indents) > 1:
            continue  # code keeps its own indentation; prose paragraphs are flush
        joined = " ".join(line.strip() for line in lines)
        joined = _EMPHASIS.sub(r"\1", joined)
        letters = sum(c.isalpha() or c == " " for c in joined)
        if (not first[:1].isupper() or not joined.endswith(".") or len(joined.split()) < 12
                or letters < 0.85 * len(joined)):
            continue
        out.append(" ".join(joined.split()))
    return out


def sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s]


def passages(blocks: list[str], seen: set[str]) -> list[str]:
    """Consecutive prose of one topic in passages of about TARGET_WORDS (MIN_WORDS to MAX_WORDS), cut
    between sentences. Sentences already in ``seen`` (topics repeat each other) are left out; used ones are added.
    """
    out, current, words = [], [], 0
    for sentence in (s for block in blocks for s in sentences(block)):
        n = len(sentence.split())
        if sentence in seen or n > MAX_WORDS or sentence.startswith(_VERSION_NOTES):
            continue
        if current and words + n > MAX_WORDS:
            out.append(current)
            current, words = [], 0
        current.append(sentence)
        words += n
        if words >= TARGET_WORDS:
            out.append(current)
            current, words = [], 0
    if current:
        if out and words + sum(len(s.split()) for s in out[-1]) <= MAX_WORDS:
            out[-1].extend(current)  # a short tail joins the passage before it
        else:
            out.append(current)
    kept = [chunk for chunk in out if sum(len(s.split()) for s in chunk) >= MIN_WORDS]
    for chunk in kept:
        seen.update(chunk)
    return [" ".join(chunk) for chunk in kept]


_CLAUSE_BREAK = re.compile(r"[,;:]| \(| which | that | whose | where | when | if | so that | and is ")


def _clip_answer(text: str) -> str | None:
    """The answer phrase up to its first clause break, if short enough to be a SQuAD answer."""
    text = _CLAUSE_BREAK.split(text)[0].strip().rstrip(".")
    words = text.split()
    if not 1 <= len(words) <= MAX_ANSWER_WORDS or not any(c.isalnum() for c in text):
        return None
    if text.count('"') % 2 or text.count("(") != text.count(")"):
        return None
    return text


def _subject_ok(subject: str) -> bool:
    words = subject.split()
    return (1 <= len(words) <= 6 and words[0].lower() not in _NOT_SUBJECT
            and not any(c in subject for c in ",;:()") and subject.count('"') % 2 == 0)


def _lower_first(subject: str) -> str:
    """The subject as it reads mid-sentence: "The "if" statement" → "the "if" statement"."""
    first = subject.split()[0]
    if first in _PROPER or not first.isalpha() or first.isupper():
        return subject
    return subject[0].lower() + subject[1:]


# Each template: a regex over one sentence with groups 'subj' and 'ans', and the question it makes.
TEMPLATES = [
    (re.compile(r"^(?P<subj>.{3,60}?) (?P<verb>is|are) used (?:to|for) (?P<ans>.+)$"),
     lambda m: f"What {m['verb']} {_lower_first(m['subj'])} used for?"),
    (re.compile(r'^(?P<subj>(?:The|A|An|")\b.{2,60}?) returns (?P<ans>.+)$'),
     lambda m: f"What does {_lower_first(m['subj'])} return?"),
    (re.compile(r"^(?P<subj>.{3,60}?) (?P<verb>is|are) (?P<ans>(?:a|an|the)\b.+)$"),
     lambda m: f"What {m['verb']} {_lower_first(m['subj'])}?"),
]
_QUOTED = re.compile(r'"([A-Za-z_][\w.()]*)"')


def template_questions(sentence: str):
    """(question, answer, answer offset in sentence) from the templates, best first."""
    for pattern, question in TEMPLATES:
        m = pattern.match(sentence)
        if not m or not _subject_ok(m["subj"]):
            continue
        answer = _clip_answer(m["ans"])
        if answer:
            yield question(m), answer, m.start("ans")


def cloze_questions(sentence: str):
    """Fill-in-the-blank on a quoted name: the sentence with the name blanked is the question."""
    words = sentence.split()
    if not 8 <= len(words) <= 30:
        return
    for m in _QUOTED.finditer(sentence):
        if len(m[1]) < 2:
            continue
        blanked = sentence[:m.start()] + '"___"' + sentence[m.end():]
        yield f"Which name fills the blank: {blanked.rstrip('.')}?", m[1], m.start(1)
        return


def passage_questions(passage: str) -> list[tuple[str, str, int]]:
    """Up to QUESTIONS_PER_PASSAGE (question, answer, answer_start), from different sentences."""
    found, clozes = [], []
    offset = 0
    for sentence in sentences(passage):
        start = passage.index(sentence, offset)
        offset = start + len(sentence)
        for question, answer, at in template_questions(sentence):
            found.append((question, answer, start + at))
            break
        else:
            for question, answer, at in cloze_questions(sentence):
                clozes.append((question, answer, start + at))
    chosen, asked = [], set()
    for candidate in found + clozes:
        if candidate[0] not in asked and len(chosen) < QUESTIONS_PER_PASSAGE:
            asked.add(candidate[0])
            chosen.append(candidate)
    for _, answer, at in chosen:
        assert passage[at:at + len(answer)] == answer
    return chosen


def build() -> tuple[dict, dict]:
    articles = ([], [])
    count = 0
    seen: set[str] = set()
    for topic in sorted(topics):
        for n, passage in enumerate(passages(prose_blocks(topics[topic]), seen)):
            qas = [{"id": f"pydoc-{topic}-{n}-{q}", "question": question,
                    "answers": [{"text": answer, "answer_start": at}]}
                   for q, (question, answer, at) in enumerate(passage_questions(passage))]
            if not qas:
                continue
            articles[count % 2].append({"title": f"{topic} ({n})", "paragraphs": [{"context": passage, "qas": qas}]})
            count += 1
    version = f"pydoc-qa 1 (Python {sys.version_info.major}.{sys.version_info.minor} pydoc_data.topics)"
    return tuple({"version": version, "data": data} for data in articles)


def main(out_dir: Path) -> None:
    for name, doc in zip(FILES, build()):
        text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never leave a half-written file
        n = sum(len(p["qas"]) for a in doc["data"] for p in a["paragraphs"])
        print(f"{path}: {len(doc['data'])} passages, {n} questions", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
