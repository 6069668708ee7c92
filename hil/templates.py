"""Labeling configs: the bundled templates, and reading any config's controls.

hilt knows six kinds of project, one ``Template`` each in ``TEMPLATES``:

- ``sft``: a TextArea on the prompt's Text object: the annotator's answer;
- ``chat``: a TextArea on a Paragraphs object showing a conversation: the next assistant turn;
- ``preference``: a Pairwise over two Text objects: the annotator's choice;
- ``rank``: a Ranker over a List of N answers: the annotator's order, best first;
- ``rate``: a Rating on an answer's Text object, with optional TextAreas on it: a critique,
  then a corrected answer;
- ``review``: a deployed model's answer to a conversation (Paragraphs), captured from live
  traffic: a Rating and a "needs correction" Choices on the answer, and a TextArea that starts
  as the answer, for the correction.

Projects made from Label Studio's stock LLM templates are read the same way: controls are
found by what they are attached to, not by name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilt.core.errors import UserError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
OBJECT_TAGS = {"Text", "HyperText", "Paragraphs", "List"}
Kind = Literal["sft", "chat", "preference", "rank", "rate", "review"]


@dataclass(frozen=True)
class Template:
    """What hilt knows of one kind of project: a new template is one entry in ``TEMPLATES``,
    one XML file beside this module and one exporter in ``hilt.labeling.export.EXPORTERS``."""

    name: str
    columns: tuple[str, ...]  # task data every row of the prompts file gives
    result_types: frozenset[str]  # the Label Studio result types its exporter reads
    drafts: Literal["none", "one", "many"]  # model drafts: none, the one to edit/grade, answers to rank
    record_format: str  # what a record of its dataset looks like (the dataset card)
    train_recipe: str  # the bundled recipe that trains on its records (the dataset card)
    record_kind: Literal["sft", "preference", "unpaired"] = "sft"  # hilt.training.data.RECORD_CHECKS


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("sft", ("prompt",), frozenset({"textarea"}), "one",
             '`{"messages": [system?, user, assistant], "meta": {...}}`', "quickstart-tiny-sft"),
    Template("chat", ("messages",), frozenset({"textarea"}), "one",
             '`{"messages": [the conversation..., assistant (the new turn)], "meta": {...}}`', "quickstart-tiny-sft"),
    Template("preference", ("prompt", "answer1", "answer2"), frozenset({"textarea", "pairwise"}), "none",
             '`{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "meta": {...}}`',
             "llama3-8b-dpo-lora", "preference"),
    Template("rank", ("prompt",), frozenset({"textarea", "ranker"}), "many",
             '`{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "meta": {"mean_ranks", '
             '"policy", ...}}` (pairs by `--rank-policy`)', "llama3-8b-dpo-lora", "preference"),
    Template("rate", ("prompt",), frozenset({"textarea", "rating"}), "one",
             '`{"prompt": [...], "completion": [assistant], "label": true|false, "meta": {"ratings", '
             '"critiques", ...}}` (KTO); corrections in `corrections/sft/` and `corrections/preference/`',
             "quickstart-tiny-kto", "unpaired"),
    Template("review", ("messages", "answer"), frozenset({"textarea", "rating", "choices"}), "none",
             '`{"messages": [the conversation..., assistant (the correction)], "meta": {"rating", "original", '
             '...}}`; (corrected over original) pairs in `corrections/preference/`', "quickstart-tiny-sft"),
)}
TEMPLATE_NAMES = tuple(TEMPLATES)


def template(name: str) -> Template:
    """The registered template ``name``.

    Raises:
        UserError: for a name hilt has no template of.
    """
    if name not in TEMPLATES:
        raise UserError(f"unknown template '{name}'; use one of {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


@dataclass(frozen=True)
class LabelingSpec:
    """Where the prompt, the answer(s) and the judgement live in a project's tasks and results."""

    kind: Kind
    prompt_object: str = "prompt"  # name of the object showing the prompt (chat: the conversation)
    prompt_key: str = "prompt"  # task data key of the prompt (chat: of the messages)
    answer_control: str | None = None  # sft, chat: TextArea name; None = any TextArea on the prompt
    comparison_control: str | None = None  # preference: Pairwise name; None = any Pairwise
    left_key: str = "answer1"  # preference: data key of the left (first) answer
    right_key: str = "answer2"
    rationale_control: str | None = None  # preference, rank: optional TextArea on the prompt
    answer_key: str = "answer"  # rate: data key of the graded answer
    answer_object: str = "answer"  # rate: name of the Text object showing it
    rating_control: str | None = None  # rate: Rating name; None = any Rating
    max_rating: int = 5  # rate, review: the Rating's maxRating (Label Studio's default is 5)
    critique_control: str | None = "critique"  # rate: optional TextArea on the answer
    correction_control: str | None = "corrected"  # rate: optional TextArea on the answer
    ranker_control: str | None = None  # rank: Ranker name; None = any Ranker
    answers_key: str = "answers"  # rank: data key of the List items ({id, title, body})
    answers_object: str = "answers"  # rank: name of the List
    buckets: tuple[str, ...] = ()  # rank: Bucket names best first (stock "LLM Ranker"); () = one ordered column
    verdict_control: str | None = None  # review: Choices on the answer ("Needs correction" / "Fine as is")
    controls: frozenset[str] = field(default_factory=frozenset)  # every control; empty = unknown
    # (name, tag in lower case, toName) of every control: what a JSON-MIN export's keys are.
    control_tags: tuple[tuple[str, str, str], ...] = ()


def template_xml(name: str) -> str:
    """The bundled labeling config of a template (``TEMPLATE_NAMES``)."""
    template(name)
    return (TEMPLATES_DIR / f"{name}.xml").read_text()


def default_spec(kind: str) -> LabelingSpec:
    """The spec to read an export file with when its labeling config is not at hand.

    It matches the bundled templates and Label Studio's stock ones alike: the answer is
    whichever TextArea result points at the ``prompt`` object (chat: at the ``dialogue``).
    """
    template(kind)
    if kind == "chat":
        return LabelingSpec(kind="chat", prompt_object="dialogue", prompt_key="messages")
    if kind == "review":
        return parse_label_config(template_xml("review"), where="template review")
    return LabelingSpec(kind=kind)  # type: ignore[arg-type]


def parse_label_config(xml: str, where: str = "label config") -> LabelingSpec:
    """Read a labeling config and find the prompt, answer and judgement controls.

    Raises:
        UserError: when the XML is malformed or has no control hilt reads.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise UserError(f"{where}: not valid XML ({err}); fix the labeling config") from None
    elements = {el.get("name"): el for el in root.iter() if el.tag in OBJECT_TAGS and el.get("name")}
    objects = {name: (el.get("value") or "").lstrip("$") for name, el in elements.items()}
    controls = [el for el in root.iter() if el.get("toName") and el.get("name")]
    common = dict(controls=frozenset(el.get("name") for el in controls),
                  control_tags=tuple((el.get("name"), el.tag.lower(), el.get("toName")) for el in controls))
    prompt_object = "prompt" if objects.get("prompt") == "prompt" else next(
        (name for name, key in objects.items() if key == "prompt"), None
    )

    def textareas_on(target: str | None) -> list[str]:
        return [el.get("name") for el in controls if el.tag == "TextArea" and el.get("toName") == target]

    rating = next((el for el in controls if el.tag == "Rating"), None)
    if rating is not None:
        stars = str(rating.get("maxRating") or "5").strip()
        common["max_rating"] = int(stars) if stars.isdigit() and int(stars) >= 1 else 5
    if rating is not None and prompt_object is not None and rating.get("toName") in objects \
            and rating.get("toName") != prompt_object:
        # rate: a Rating on the answer's Text; TextAreas on it are the critique, then the correction.
        target = rating.get("toName")
        notes = textareas_on(target)
        return LabelingSpec(
            kind="rate", prompt_object=prompt_object, prompt_key=objects[prompt_object], answer_object=target,
            answer_key=objects[target], rating_control=rating.get("name"),
            critique_control=notes[0] if notes else None, correction_control=notes[1] if len(notes) > 1 else None,
            **common,
        )
    dialogue = next((name for name, el in elements.items() if el.tag == "Paragraphs"), None)
    if rating is not None and prompt_object is None and dialogue is not None and rating.get("toName") in objects:
        # review: a Rating on the captured answer under a conversation; the TextArea on it is the correction.
        target = rating.get("toName")
        notes = textareas_on(target)
        verdict = next((el.get("name") for el in controls if el.tag == "Choices" and el.get("toName") == target), None)
        return LabelingSpec(
            kind="review", prompt_object=dialogue, prompt_key=objects[dialogue], answer_object=target,
            answer_key=objects[target], rating_control=rating.get("name"), critique_control=None,
            correction_control=notes[-1] if notes else None, verdict_control=verdict, **common,
        )
    ranker = next((el for el in controls if el.tag == "Ranker"), None)
    if ranker is not None:
        target = ranker.get("toName")
        if target not in elements or elements[target].tag != "List":
            raise UserError(f"{where}: Ranker '{ranker.get('name')}' must point at a List of the answers")
        if prompt_object is None:
            raise UserError(f"{where}: no Text object shows $prompt; the rank template needs one")
        rationale = textareas_on(prompt_object)
        return LabelingSpec(
            kind="rank", prompt_object=prompt_object, prompt_key=objects[prompt_object],
            ranker_control=ranker.get("name"), answers_object=target, answers_key=objects[target],
            buckets=tuple(b.get("name") for b in ranker.iter("Bucket") if b.get("name")),
            rationale_control=rationale[0] if rationale else None, **common,
        )
    pairwise = next((el for el in controls if el.tag == "Pairwise"), None)
    if pairwise is not None:
        targets = [t.strip() for t in pairwise.get("toName", "").split(",")]
        if len(targets) != 2 or not all(t in objects for t in targets):
            raise UserError(f"{where}: Pairwise '{pairwise.get('name')}' must point at two Text objects")
        if prompt_object is None:
            raise UserError(f"{where}: no Text object shows $prompt; the preference template needs one")
        rationale = textareas_on(prompt_object)
        return LabelingSpec(
            kind="preference", prompt_object=prompt_object, prompt_key=objects[prompt_object],
            comparison_control=pairwise.get("name"), left_key=objects[targets[0]], right_key=objects[targets[1]],
            rationale_control=rationale[0] if rationale else None, **common,
        )
    dialogue = next((name for name, el in elements.items() if el.tag == "Paragraphs" and textareas_on(name)), None)
    if dialogue is not None:
        return LabelingSpec(kind="chat", prompt_object=dialogue, prompt_key=objects[dialogue],
                            answer_control=textareas_on(dialogue)[0], **common)
    if prompt_object is not None and textareas_on(prompt_object):
        return LabelingSpec(kind="sft", prompt_object=prompt_object, prompt_key=objects[prompt_object],
                            answer_control=textareas_on(prompt_object)[0], **common)
    raise UserError(
        f"{where}: none of a TextArea on a $prompt Text (sft), a TextArea on a Paragraphs conversation (chat), "
        "a Pairwise over two answers (preference), a Ranker over a List of answers (rank), a Rating on an "
        "answer (rate) or on a model's answer to a Paragraphs conversation (review); create the project from `hilt label create --template " + "|".join(TEMPLATE_NAMES) + "`"
    )
