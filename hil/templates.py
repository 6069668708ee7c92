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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilt.core.errors import UserError
from hilt.core.refs import Ref, load_ref

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
OBJECT_TAGS = {"Text", "HyperText", "Paragraphs", "List"}


@dataclass(frozen=True)
class LabelingSpec:
    """Where the prompt, the answer(s) and the judgement live in a project's tasks and results."""

    kind: str  # the template's name (TEMPLATES)
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


@dataclass(frozen=True)
class ConfigView:
    """A labeling config as the matchers read it: its objects, its controls, and what every spec shares."""

    elements: dict[str, ET.Element]  # object name -> its element (Text, Paragraphs, List…)
    objects: dict[str, str]  # object name -> the task data key it shows ("$prompt" -> "prompt")
    controls: list[ET.Element]  # every element with a name and a toName
    common: dict  # LabelingSpec fields every kind gets (controls, control_tags, max_rating)
    prompt_object: str | None  # the object showing $prompt, if any
    where: str  # for error messages

    def textareas_on(self, target: str | None) -> list[str]:
        return [el.get("name") for el in self.controls if el.tag == "TextArea" and el.get("toName") == target]

    def first(self, tag: str) -> ET.Element | None:
        return next((el for el in self.controls if el.tag == tag), None)


@dataclass(frozen=True)
class Template:
    """Everything hilt knows of one kind of project. A new template is one entry in ``TEMPLATES``,
    its XML file in ``templates/`` beside this module, and the functions its entry names (anywhere;
    ``"module:function"`` references are imported on use): nothing else picks among templates by name.
    """

    name: str
    columns: tuple[str, ...]  # task data every row of the prompts file gives
    result_types: frozenset[str]  # the Label Studio result types its exporter reads
    drafts: Literal["none", "one", "many"]  # model drafts: none, the one to edit/grade, answers to rank
    record_format: str  # what a record of its dataset looks like (the dataset card)
    train_recipe: str  # the bundled recipe that trains on its records (the dataset card)
    record_kind: Literal["sft", "preference", "unpaired"]  # hilt.training.data.records.RECORD_CHECKS
    match: Callable[[ConfigView], LabelingSpec | None]  # its spec, when a labeling config is of this kind
    precedence: int  # matchers run highest first: a config that also fits a plainer kind is this one
    exporter: Ref  # (tasks, spec, options, scrub, out): records and rejects into out (hilt.labeling.exporters)
    labels: Ref  # (results, spec, task) -> what two annotations of a task are compared by, or None
    task_builder: Ref  # (row, key, index, spec, drafts) -> a Label Studio task (hilt.labeling.importing)
    agreement: Ref | None = None  # (tasks, spec, multi) -> its own agreement figures (hilt.labeling.agreement)
    row_reader: Ref | None = None  # (row, where) -> the row as its tasks need it; None = as it is
    conversation: bool = False  # the prompt is a conversation (a list of messages), not a text
    notes_on: Literal["prompt", "answer"] = "prompt"  # where its TextAreas point: the prompt or the answer
    one_answer: bool = False  # its TextArea on the prompt is the answer: several differently named are ambiguous
    config: Path | None = None  # its labeling config (XML); None = templates/<name>.xml beside this module

    def export(self, tasks: list[dict], spec: LabelingSpec, options, scrub, out) -> None:
        load_ref(self.exporter)(tasks, spec, options, scrub, out)

    def label(self, results: list[dict], spec: LabelingSpec, task: dict):
        return load_ref(self.labels)(results, spec, task)

    def agreement_figures(self, tasks: list[dict], spec: LabelingSpec, multi: dict) -> dict:
        return load_ref(self.agreement)(tasks, spec, multi) if self.agreement is not None else {}

    def read_row(self, row: dict, where: str) -> dict:
        return load_ref(self.row_reader)(row, where) if self.row_reader is not None else row

    def build_task(self, row: dict, key: str, index: int, spec: LabelingSpec, drafts) -> dict:
        return load_ref(self.task_builder)(row, key, index, spec, drafts)


def template_xml(name: str) -> str:
    """The labeling config of a template (``TEMPLATES``): its ``config`` file, or the bundled
    ``templates/<name>.xml``."""
    return (template(name).config or TEMPLATES_DIR / f"{name}.xml").read_text()


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


def _match_rate(view: ConfigView) -> LabelingSpec | None:
    """A Rating on the answer's Text (not the prompt's); TextAreas on it are the critique, then the correction."""
    rating = view.first("Rating")
    if rating is None or view.prompt_object is None or rating.get("toName") not in view.objects \
            or rating.get("toName") == view.prompt_object:
        return None
    target = rating.get("toName")
    notes = view.textareas_on(target)
    return LabelingSpec(
        kind="rate", prompt_object=view.prompt_object, prompt_key=view.objects[view.prompt_object],
        answer_object=target, answer_key=view.objects[target], rating_control=rating.get("name"),
        critique_control=notes[0] if notes else None, correction_control=notes[1] if len(notes) > 1 else None,
        **view.common,
    )


def _match_review(view: ConfigView) -> LabelingSpec | None:
    """A Rating on the captured answer under a Paragraphs conversation; the TextArea on it is the correction."""
    rating = view.first("Rating")
    dialogue = next((name for name, el in view.elements.items() if el.tag == "Paragraphs"), None)
    if rating is None or view.prompt_object is not None or dialogue is None or rating.get("toName") not in view.objects:
        return None
    target = rating.get("toName")
    notes = view.textareas_on(target)
    verdict = next((el.get("name") for el in view.controls if el.tag == "Choices" and el.get("toName") == target),
                   None)
    return LabelingSpec(
        kind="review", prompt_object=dialogue, prompt_key=view.objects[dialogue], answer_object=target,
        answer_key=view.objects[target], rating_control=rating.get("name"), critique_control=None,
        correction_control=notes[-1] if notes else None, verdict_control=verdict, **view.common,
    )


def _match_rank(view: ConfigView) -> LabelingSpec | None:
    """A Ranker over a List of the answers."""
    ranker = view.first("Ranker")
    if ranker is None:
        return None
    target = ranker.get("toName")
    if target not in view.elements or view.elements[target].tag != "List":
        raise UserError(f"{view.where}: Ranker '{ranker.get('name')}' must point at a List of the answers")
    if view.prompt_object is None:
        raise UserError(f"{view.where}: no Text object shows $prompt; the rank template needs one")
    rationale = view.textareas_on(view.prompt_object)
    return LabelingSpec(
        kind="rank", prompt_object=view.prompt_object, prompt_key=view.objects[view.prompt_object],
        ranker_control=ranker.get("name"), answers_object=target, answers_key=view.objects[target],
        buckets=tuple(b.get("name") for b in ranker.iter("Bucket") if b.get("name")),
        rationale_control=rationale[0] if rationale else None, **view.common,
    )


def _match_preference(view: ConfigView) -> LabelingSpec | None:
    """A Pairwise over two Text objects (the answers); a TextArea on the prompt is the rationale."""
    pairwise = view.first("Pairwise")
    if pairwise is None:
        return None
    targets = [t.strip() for t in pairwise.get("toName", "").split(",")]
    if len(targets) != 2 or not all(t in view.objects for t in targets):
        raise UserError(f"{view.where}: Pairwise '{pairwise.get('name')}' must point at two Text objects")
    if view.prompt_object is None:
        raise UserError(f"{view.where}: no Text object shows $prompt; the preference template needs one")
    rationale = view.textareas_on(view.prompt_object)
    return LabelingSpec(
        kind="preference", prompt_object=view.prompt_object, prompt_key=view.objects[view.prompt_object],
        comparison_control=pairwise.get("name"), left_key=view.objects[targets[0]],
        right_key=view.objects[targets[1]], rationale_control=rationale[0] if rationale else None, **view.common,
    )


def _match_chat(view: ConfigView) -> LabelingSpec | None:
    """A TextArea on a Paragraphs conversation: the next assistant turn."""
    dialogue = next((name for name, el in view.elements.items() if el.tag == "Paragraphs" and view.textareas_on(name)),
                    None)
    if dialogue is None:
        return None
    return LabelingSpec(kind="chat", prompt_object=dialogue, prompt_key=view.objects[dialogue],
                        answer_control=view.textareas_on(dialogue)[0], **view.common)


def _match_sft(view: ConfigView) -> LabelingSpec | None:
    """A TextArea on the $prompt Text: the answer."""
    if view.prompt_object is None or not view.textareas_on(view.prompt_object):
        return None
    return LabelingSpec(kind="sft", prompt_object=view.prompt_object, prompt_key=view.objects[view.prompt_object],
                        answer_control=view.textareas_on(view.prompt_object)[0], **view.common)


_EXPORTERS = "hilt.labeling.exporters"
_AGREEMENT = "hilt.labeling.agreement"
_IMPORTING = "hilt.labeling.importing"

TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("sft", ("prompt",), frozenset({"textarea"}), "one",
             '`{"messages": [system?, user, assistant], "meta": {...}}`', "quickstart-tiny-sft", "sft",
             _match_sft, 0, f"{_EXPORTERS}:export_sft", f"{_AGREEMENT}:answer_label", f"{_IMPORTING}:draft_task",
             one_answer=True),
    Template("chat", ("messages",), frozenset({"textarea"}), "one",
             '`{"messages": [the conversation..., assistant (the new turn)], "meta": {...}}`', "quickstart-tiny-sft",
             "sft", _match_chat, 1, f"{_EXPORTERS}:export_sft", f"{_AGREEMENT}:answer_label",
             f"{_IMPORTING}:draft_task", row_reader=f"{_IMPORTING}:chat_row", conversation=True, one_answer=True),
    Template("preference", ("prompt", "answer1", "answer2"), frozenset({"textarea", "pairwise"}), "none",
             '`{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "meta": {...}}`',
             "llama3-8b-dpo-lora", "preference", _match_preference, 2, f"{_EXPORTERS}:export_preference",
             f"{_AGREEMENT}:choice_label", f"{_IMPORTING}:pair_task", agreement=f"{_AGREEMENT}:preference_agreement"),
    Template("rank", ("prompt",), frozenset({"textarea", "ranker"}), "many",
             '`{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "meta": {"mean_ranks", '
             '"policy", ...}}` (pairs by `--rank-policy`)', "llama3-8b-dpo-lora", "preference", _match_rank, 3,
             f"{_EXPORTERS}:export_rank", f"{_AGREEMENT}:ranking_label", f"{_IMPORTING}:rank_task",
             agreement=f"{_AGREEMENT}:rank_agreement", row_reader=f"{_IMPORTING}:rank_row"),
    Template("rate", ("prompt",), frozenset({"textarea", "rating"}), "one",
             '`{"prompt": [...], "completion": [assistant], "label": true|false, "meta": {"ratings", '
             '"critiques", ...}}` (KTO); corrections in `corrections/sft/` and `corrections/preference/`',
             "quickstart-tiny-kto", "unpaired", _match_rate, 5, f"{_EXPORTERS}:export_rate",
             f"{_AGREEMENT}:rating_label", f"{_IMPORTING}:graded_task", agreement=f"{_AGREEMENT}:rating_summary",
             notes_on="answer"),
    Template("review", ("messages", "answer"), frozenset({"textarea", "rating", "choices"}), "none",
             '`{"messages": [the conversation..., assistant (the correction)], "meta": {"rating", "original", '
             '...}}`; (corrected over original) pairs in `corrections/preference/`', "quickstart-tiny-sft", "sft",
             _match_review, 4, f"{_EXPORTERS}:export_review", f"{_AGREEMENT}:rating_label",
             f"{_IMPORTING}:review_task", agreement=f"{_AGREEMENT}:rating_summary",
             row_reader=f"{_IMPORTING}:review_row", conversation=True, notes_on="answer"),
)}


TEMPLATE_NAMES = tuple(TEMPLATES)  # the bundled ones (the pipeline schema's choices, fixed at import)


def template(name: str) -> Template:
    """The registered template ``name``.

    Raises:
        UserError: for a name hilt has no template of.
    """
    if name not in TEMPLATES:
        raise UserError(f"unknown template '{name}'; use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]




def parse_label_config(xml: str, where: str = "label config") -> LabelingSpec:
    """Read a labeling config and find the prompt, answer and judgement controls: the spec of the
    first template (highest ``precedence``) whose matcher recognises it.

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
    common: dict = dict(controls=frozenset(el.get("name") for el in controls),
                        control_tags=tuple((el.get("name"), el.tag.lower(), el.get("toName")) for el in controls))
    prompt_object = "prompt" if objects.get("prompt") == "prompt" else next(
        (name for name, key in objects.items() if key == "prompt"), None
    )
    view = ConfigView(elements, objects, controls, common, prompt_object, where)
    rating = view.first("Rating")
    if rating is not None:  # every kind's spec carries the scale (rate and review read it)
        stars = str(rating.get("maxRating") or "5").strip()
        common["max_rating"] = int(stars) if stars.isdigit() and int(stars) >= 1 else 5
    for candidate in sorted(TEMPLATES.values(), key=lambda t: -t.precedence):
        spec = candidate.match(view)
        if spec is not None:
            return spec
    raise UserError(
        f"{where}: none of a TextArea on a $prompt Text (sft), a TextArea on a Paragraphs conversation (chat), "
        "a Pairwise over two answers (preference), a Ranker over a List of answers (rank), a Rating on an "
        "answer (rate) or on a model's answer to a Paragraphs conversation (review); create the project from "
        f"`hilt label create --template {'|'.join(TEMPLATES)}`"
    )
