"""Training examples for both agents, built from LoCoMo with the Memory-R1 split (train conv-26, val conv-30).

    python -m finetune.data --out runs/ft-data --manager MANAGER.gguf --embedder EMBEDDER.gguf
    python -m finetune.data --out runs/ft-tiny --tiny --max-sessions 2      # smoke run: raw turns, tiny embedder

Each conversation is observed turn by turn by the current Memory Manager into its own bank
(out/banks/<conversation>.db), exactly as `Memory.observe` does for users; `--manager verbatim`
stores each turn as it was said instead, as the benchmark's rag method does (and keeps the raw turn,
as `observe` does). Along the way:
- a Memory Manager example is kept for every turn named in some question's evidence: the turn,
  the related memories `observe` shows for it, the questions, and the part of the bank those
  questions retrieve before the turn (the reward rebuilds that part and applies the manager's ops);
- once the whole conversation is in, an Answer Agent example is kept for every question that
  retrieves anything (with nothing retrieved, `Memory.ask` never calls the model): the up to k (60)
  items that `Memory.ask` shows for it, and the gold answer. What those items are follows ask's
  `sources`, by default memr1's own (`memr1.memory.DEFAULT_SOURCES`, the raw turns): `--sources
  memories` shows the manager's memories instead, `both` the best of each.
Questions of category 5 (adversarial) are left out, as in the paper.

Written: out/{train,val}/{answer,manager}.jsonl, one pydantic example per line. Prompts are
built from the examples by `memr1.prompts` when training, never stored, so they cannot drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from memr1 import Memory, MemR1Error, datasets, prompts
from memr1.bank import DEFAULT_USER, SOURCES, Sources, turn_line
from memr1.config import AgentConfig, chat_backend
from memr1.embedding import LlamaEmbedder
from memr1.llm import LLM
from memr1.memory import DEFAULT_SOURCES
from memr1.schema import Turn

log = logging.getLogger("finetune.data")

Agent = Literal["answer", "manager"]
AGENTS: tuple[Agent, ...] = ("answer", "manager")
SPLITS = tuple(datasets.SPLITS)  # ("train", "val"): the test conversations are never trained on
_DIA_ID = re.compile(r"D\d+:\d+")  # a few evidence strings hold several ids ("D8:6; D9:17")


class Mem(BaseModel):
    """A memory (or a raw turn) as the bank held it: database id, text as shown, and when the fact was said."""

    id: int
    text: str
    at: datetime | None = None
    kind: Literal["memory", "turn"] = "memory"  # a turn's text is as ask shows it: "Speaker: text", dates written out


class Question(BaseModel):
    question: str
    answer: str
    category: int


class AnswerExample(BaseModel):
    conversation: str
    question: str
    answer: str  # gold
    category: int
    asked_on: datetime | None = None  # as the benchmark asks: at the date of the conversation's last turn
    memories: list[Mem]  # what Memory.ask(question, k=k, sources=sources) shows the agent, best first
    sources: Sources = "memories"  # examples written before ask had sources were built from memories
    k: int | None = None  # how many items were asked for (None: unrecorded)
    distill: bool = True  # the paper's Answer Agent selects memories, then answers; False: ask's default, answer only

    def at_k(self, k: int) -> AnswerExample:
        """The example as ask(k=k) would show it: the first k items (retrieval ranks the same at any k <= 200)."""
        if self.k is not None and self.k < k and len(self.memories) == self.k:
            raise ValueError(
                f"{self.conversation}: the examples were retrieved with k={self.k}, fewer than k={k}: "
                f"rebuild them with python -m finetune.data --k {k}"
            )
        return self.model_copy(update={"memories": self.memories[:k], "k": k})

    def as_asked(self, k: int, distill: bool) -> AnswerExample:
        """The example as ask(k=k, distill=distill) would put it to the agent."""
        return self.at_k(k).model_copy(update={"distill": distill})

    def messages(self) -> list[dict[str, str]]:
        return prompts.answer_messages(
            self.question, memories=shown(self.memories), now=self.asked_on, distill=self.distill
        )

    def schema(self) -> dict[str, Any]:
        """What memr1's grammar lets the agent write for this prompt (agents.AnswerAgent.answer)."""
        return prompts.answer_schema(len(self.memories)) if self.distill else prompts.DIRECT_ANSWER_SCHEMA


class ManagerExample(BaseModel):
    conversation: str
    dia_id: str
    text: str
    speaker: str | None = None
    at: datetime | None = None
    session: str | None = None
    asked_on: datetime | None = None
    related: list[Mem]  # what Memory.observe shows the manager for this turn, best first
    bank: list[Mem]  # related memories plus what each question retrieves before the turn
    questions: list[Question]  # the questions whose evidence names this turn

    def messages(self) -> list[dict[str, str]]:
        return prompts.manager_messages(
            self.text, speaker=self.speaker, at=self.at, session=self.session, memories=shown(self.related)
        )

    def schema(self) -> dict[str, Any]:
        """What memr1's grammar lets the manager write for this prompt (agents.MemoryManager.decide)."""
        return prompts.manager_schema([m.id for m in shown(self.related)])


Example = AnswerExample | ManagerExample
EXAMPLE_TYPES: dict[Agent, type[AnswerExample] | type[ManagerExample]] = {
    "answer": AnswerExample,
    "manager": ManagerExample,
}


def shown(memories: Sequence[Mem]) -> list[prompts.Shown]:
    """The small ids the model sees, exactly as Memory gives them."""
    return prompts.shown_memories([(m.id, m.text, m.at) for m in memories])


class CachedEmbedder(LlamaEmbedder):
    """A llama.cpp embedder that remembers its vectors.

    Reward banks are rebuilt for every completion from the same few hundred texts, and the data
    builder embeds each turn twice (once to record what observe will see, once in observe).
    """

    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._vectors: dict[tuple[bool, str], np.ndarray] = {}

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if (query, t) not in self._vectors]
        if missing:
            for text, vector in zip(missing, super().embed(missing, query=query), strict=True):
                self._vectors[(query, text)] = vector
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[(query, t)] for t in texts])


def _mems(hits: Iterable[Any]) -> list[Mem]:
    return [Mem(id=h.memory.id, text=h.memory.text, at=h.memory.at) for h in hits]


def recalled(mem: Memory, question: str, k: int, sources: Sources) -> list[Mem]:
    """What `Memory.ask(question, k=k, sources=sources)` shows the Answer Agent, best first."""
    return [
        Mem(id=item.key[1], text=item.text, at=item.at, kind=item.key[0])
        for item in mem.recall(question, k, user=DEFAULT_USER, sources=sources)
    ]


def evidence_turns(qa: datasets.QA) -> set[str]:
    return {d for e in qa.evidence for d in _DIA_ID.findall(e)}


def build_conversation(
    sample: dict[str, Any],
    mem: Memory,
    *,
    k: int = 60,
    max_sessions: int | None = None,
    verbatim: bool = False,
    sources: Sources = DEFAULT_SOURCES,
    progress: bool = True,
) -> tuple[list[ManagerExample], list[AnswerExample]]:
    """Observe one conversation into `mem` (an empty bank), keeping the examples as it goes.

    `verbatim` adds each turn as a memory ("speaker: text") instead of asking the manager; the raw
    turn is kept too, as `observe` keeps it. Answer examples show what `Memory.ask(sources=sources)` shows.
    """
    from tqdm.auto import tqdm

    sid = sample["sample_id"]
    turns = datasets.locomo_turns(sample)
    if max_sessions is not None:
        turns = [t for t in turns if t.session <= max_sessions]
    seen = {t.dia_id for t in turns}
    # with sessions cut, only questions whose whole evidence was observed (as the benchmark's --max-sessions)
    qas = [
        q for q in datasets.locomo_questions([sample]) if max_sessions is None or (evidence_turns(q) or {""}) <= seen
    ]
    asked_on = turns[-1].at
    touching: dict[str, list[datasets.QA]] = defaultdict(list)
    for qa in qas:
        for dia_id in evidence_turns(qa):
            touching[dia_id].append(qa)
    managers: list[ManagerExample] = []
    failed = 0
    for t in tqdm(turns, desc=f"{sid} observe", unit="turn", disable=not progress):
        session = f"session_{t.session}"  # as memr1.bench_locomo observes
        if touching[t.dia_id]:
            related = _mems(mem.search(t.text, mem.related_k))
            bank = {m.id: m for m in related}
            for qa in touching[t.dia_id]:
                for m in _mems(mem.search(qa.question, k)):
                    bank.setdefault(m.id, m)
            managers.append(
                ManagerExample(
                    conversation=sid,
                    dia_id=t.dia_id,
                    text=t.text,
                    speaker=t.speaker,
                    at=t.at,
                    session=session,
                    asked_on=asked_on,
                    related=related,
                    bank=sorted(bank.values(), key=lambda m: m.id),
                    questions=[
                        Question(question=q.question, answer=q.answer, category=q.category) for q in touching[t.dia_id]
                    ],
                )
            )
        try:
            turn = Turn(text=t.text, speaker=t.speaker, at=t.at, session=session, metadata={"dia_id": t.dia_id})
            if verbatim:  # as if the manager had written the turn down word for word: observe's one transaction
                mem.apply(prompts.ManagerPlan(ops=[prompts.PlannedOp("ADD", None, turn_line(t.speaker, t.text))]), turn)
            else:
                mem.observe(turn)
        except MemR1Error as e:  # as the benchmark does: a refused turn is logged and skipped
            failed += 1
            log.warning("%s %s not observed: %s", sid, t.dia_id, e)
    if failed:
        log.warning("%s: %d of %d turns could not be observed", sid, failed, len(turns))
    answers = []
    for q in qas:
        if memories := recalled(mem, q.question, k, sources):
            answers.append(
                AnswerExample(
                    conversation=sid,
                    question=q.question,
                    answer=q.answer,
                    category=q.category,
                    asked_on=asked_on,
                    memories=memories,
                    sources=sources,
                    k=k,
                )
            )
    if len(answers) < len(qas):
        log.warning(
            "%s: %d of %d questions retrieve nothing and give no example", sid, len(qas) - len(answers), len(qas)
        )
    return managers, answers


def build(
    data: list[dict[str, Any]],
    out: Path,
    *,
    manager: LLM | None,
    embedder: str | Path,
    splits: Sequence[str] = SPLITS,
    k: int = 60,
    sources: Sources = DEFAULT_SOURCES,
    max_sessions: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Write out/<split>/{answer,manager}.jsonl for the conversations of `splits`; returns the counts.

    `manager=None` stores the turns verbatim.
    Banks are rebuilt from scratch (out/banks/<conversation>.db): the examples must come from one
    manager's run, never from a blend of two.
    """
    vectors = CachedEmbedder(embedder)
    examples: dict[str, dict[Agent, list[Example]]] = {s: {"answer": [], "manager": []} for s in splits}
    (out / "banks").mkdir(parents=True, exist_ok=True)
    for sample in data:
        split = datasets.split_of(sample["sample_id"])
        if split not in examples:
            continue
        bank = out / "banks" / f"{sample['sample_id']}.db"
        for stale in (bank, bank.with_name(bank.name + "-wal"), bank.with_name(bank.name + "-shm")):
            stale.unlink(missing_ok=True)
        with Memory(bank, embedder=vectors, manager=manager) as mem:
            managers, answers = build_conversation(
                sample,
                mem,
                k=k,
                max_sessions=max_sessions,
                verbatim=manager is None,
                sources=sources,
                progress=progress,
            )
        examples[split]["manager"] += managers
        examples[split]["answer"] += answers
    for split, by_agent in examples.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for agent, rows in by_agent.items():
            write(out / split / f"{agent}.jsonl", rows)
    return {split: {agent: len(rows) for agent, rows in by_agent.items()} for split, by_agent in examples.items()}


def write(path: Path, examples: Sequence[BaseModel]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(e.model_dump_json() + "\n" for e in examples), encoding="utf-8")
    tmp.replace(path)


def load(directory: str | Path, split: str, agent: Agent) -> list[Any]:
    path = Path(directory) / split / f"{agent}.jsonl"
    model = EXAMPLE_TYPES[agent]
    return [model.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def example_from_json(text: str) -> Example:
    """An example as to_dataset stores it; its fields say which agent's it is."""
    raw = json.loads(text)
    return (ManagerExample if "related" in raw else AnswerExample).model_validate(raw)


def to_dataset(examples: Sequence[Example]):
    """A datasets.Dataset for TRL: the conversational prompt, and the example itself for the reward."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [e.messages() for e in examples],
            "example": [e.model_dump_json() for e in examples],
        }
    )


def main(argv: Sequence[str] | None = None) -> None:
    from memr1.embedding import DEFAULT_EMBEDDER

    p = argparse.ArgumentParser(prog="python -m finetune.data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the examples and the banks")
    p.add_argument("--data", type=Path, default=None, help="locomo10.json (default: ../shared/data, else a download)")
    p.add_argument(
        "--manager",
        default=None,
        help="GGUF path or hub ref of the Memory Manager that builds the banks, or 'verbatim'",
    )
    p.add_argument("--embedder", default=None, help=f"embedding GGUF (default {DEFAULT_EMBEDDER})")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server for the manager (--manager names it)")
    p.add_argument("--gpu-layers", type=int, default=0, help="layers of the manager to offload (llama.cpp)")
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated: train,val")
    p.add_argument("--k", type=int, default=60, help="items retrieved per question (the paper's 60)")
    p.add_argument(
        "--sources",
        choices=SOURCES,
        default=DEFAULT_SOURCES,
        help=f"what the Answer Agent is shown, as Memory.ask's sources (default {DEFAULT_SOURCES}, ask's own)",
    )
    p.add_argument("--max-sessions", type=int, default=None, help="observe only the first N sessions (smoke runs)")
    p.add_argument("--tiny", action="store_true", help="verbatim banks and a random-weight embedder: a smoke run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    embedder = args.embedder or DEFAULT_EMBEDDER
    if args.tiny:
        from memr1.tiny_models import write_embedding_model

        args.manager = "verbatim"
        embedder = str(write_embedding_model(args.out / "models" / "tiny-embed.gguf", dim=32, seed=0))
    manager = (
        None
        if args.manager == "verbatim"
        # 0 offloads nothing, llama.cpp's default: only a count asked for is refused beside --base-url
        else chat_backend(
            AgentConfig(model=args.manager, n_gpu_layers=args.gpu_layers or None),
            role="manager",
            base_url=args.base_url,
        )
    )
    counts = build(
        datasets.load_locomo(datasets.ensure_locomo(args.data)),
        args.out,
        manager=manager,
        embedder=embedder,
        splits=args.splits.split(","),
        k=args.k,
        sources=args.sources,
        max_sessions=args.max_sessions,
    )
    (args.out / "counts.json").write_text(json.dumps(counts, indent=2))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
