"""Random container names in Docker's style ("adjective_noun"), unique among containers."""

from __future__ import annotations

import secrets
from collections.abc import Callable

ADJECTIVES = (
    "amber",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "cosmic",
    "crisp",
    "eager",
    "fancy",
    "gentle",
    "happy",
    "jolly",
    "keen",
    "lively",
    "lucid",
    "merry",
    "nimble",
    "noble",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "serene",
    "sharp",
    "shiny",
    "snappy",
    "steady",
    "sunny",
    "swift",
    "tender",
    "tidy",
    "vivid",
    "wise",
    "witty",
    "zealous",
)
NOUNS = (  # computing and science pioneers
    "babbage",
    "bardeen",
    "bell",
    "boole",
    "cerf",
    "curie",
    "dijkstra",
    "easley",
    "euclid",
    "faraday",
    "fermat",
    "feynman",
    "gauss",
    "hamilton",
    "hopper",
    "kepler",
    "knuth",
    "lamarr",
    "lovelace",
    "maxwell",
    "meitner",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "turing",
    "wozniak",
    "yonath",
)


def generate(taken: Callable[[str], bool]) -> str:
    for _ in range(100):
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}"
        if not taken(name):
            return name
    while True:  # the plain pairs are exhausted: add a number, as Docker does
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}{secrets.randbelow(10)}"
        if not taken(name):
            return name
