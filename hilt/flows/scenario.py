"""The demo's scenario: an internal-process assistant at a financial firm.

Synthetic, deterministic prompts with reference answers: employees ask how to order a
laptop, book office space, reset a password or file an expense, and advisors ask for
short summaries of past client conversations. Answers are polite and accurate, and
reuse the details of the question, which a small model can learn and a metric can check.
"""

from __future__ import annotations

import random

ITEMS = ["laptop", "monitor", "docking station", "headset", "keyboard", "phone"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana"]
ROOMS = ["room 3A", "room 4B", "the board room", "desk 12", "desk 7", "room 2C"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
SYSTEMS = ["the HR portal", "the trading desk app", "email", "the expense tool", "the CRM"]
CLIENTS = ["Mrs. Lee", "Mr. Park", "Ms. Diaz", "Dr. Khan", "Mr. Novak"]
TOPICS = ["bond fees", "fund risk", "a new account", "portfolio review", "travel insurance"]

SYSTEM_PROMPT = "You are the firm's internal assistant. Answer politely and accurately."


def _example(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["order", "book", "reset", "summary"])
    if kind == "order":
        item, name = rng.choice(ITEMS), rng.choice(NAMES)
        return kind, f"Please order a {item} for {name}.", f"Happy to help. Open the IT portal, request a {item} for {name}, and your manager approves it."
    if kind == "book":
        room, day = rng.choice(ROOMS), rng.choice(DAYS)
        return kind, f"Can you book {room} on {day}?", f"Of course. Book {room} for {day} in the office portal; you get a calendar invite."
    if kind == "reset":
        system = rng.choice(SYSTEMS)
        return kind, f"I forgot my password for {system}.", f"No problem. Use the self-service reset on {system}, then sign in again."
    client, topic, day = rng.choice(CLIENTS), rng.choice(TOPICS), rng.choice(DAYS)
    return (
        kind,
        f"Summarize: {client} called about {topic} and asked for a follow-up on {day}.",
        f"{client} asked about {topic}; follow up on {day}.",
    )


# How many distinct prompts the kinds above can make: orders, bookings, resets, summaries.
DISTINCT_PROMPTS = len(ITEMS) * len(NAMES) + len(ROOMS) * len(DAYS) + len(SYSTEMS) + len(CLIENTS) * len(TOPICS) * len(DAYS)


def scenario_prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct prompts with reference answers, as ``{id, prompt, system, reference, kind}``.

    Raises:
        ValueError: when ``n`` is more than the scenario can make (``DISTINCT_PROMPTS``).
    """
    if n > DISTINCT_PROMPTS:
        raise ValueError(f"the scenario has {DISTINCT_PROMPTS} distinct prompts; asked for {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n:
        kind, prompt, reference = _example(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"id": len(out), "kind": kind, "system": SYSTEM_PROMPT, "prompt": prompt, "reference": reference})
    return out


# Traffic the demo's assistant was not trained for: new topics, prompts several times longer.
NEW_TOPICS = ["municipal bond taxation", "derivatives margin rules", "cross-border pension transfers",
              "quantum-safe encryption", "merger arbitrage"]


def drifting_prompts(n: int, seed: int = 3) -> list[dict]:
    """``n`` prompts unlike the scenario's (new topics, long), with the answer a reviewer would write."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic, client, day = rng.choice(NEW_TOPICS), rng.choice(CLIENTS), rng.choice(DAYS)
        prompt = (f"Write a detailed memo on {topic} for {client}, who has holdings in three countries, covering "
                  f"the rules that changed this year, the deadlines, the penalties, the forms to file and who signs "
                  f"them, and compare the options side by side with their costs (case {i}).")
        reference = (f"I can't advise on {topic} myself; I have asked the specialist desk to prepare the memo for "
                     f"{client} by {day}.")
        out.append({"id": f"drift-{i}", "kind": "drift", "system": SYSTEM_PROMPT, "prompt": prompt,
                    "reference": reference})
    return out
