"""Generate ``corpus.txt``, the default training text of ``python -m xlstm train``.

The text is original: short scenes from an invented harbour town, produced from the small
hand-written grammar below with a fixed seed, so that the file can be rebuilt byte for byte::

    python -m xlstm.data.make_corpus            # rewrites xlstm/data/corpus.txt
    python -m xlstm.data.make_corpus --check    # exits 1 if the committed file differs

The grammar keeps a modest vocabulary and repeats its sentence shapes, so that a small
character-level LSTM can learn it in a few minutes on a laptop and its samples read like English.
Each scene keeps one person, place and time of day, so pronouns and names agree within a paragraph.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

SEED = 20240611
TARGET_BYTES = 64_000
CORPUS_PATH = Path(__file__).with_name("corpus.txt")

# name, pronoun (subject, object, possessive), trade
PEOPLE = [
    ("Mara", "she", "her", "her", "the baker"),
    ("Tobin", "he", "him", "his", "the ferryman"),
    ("Old Edda", "she", "her", "her", "the net mender"),
    ("Pell", "he", "him", "his", "the lamp keeper"),
    ("Ines", "she", "her", "her", "the schoolteacher"),
    ("Corran", "he", "him", "his", "the clockmaker"),
    ("Wren", "she", "her", "her", "the miller's daughter"),
    ("Hollis", "he", "him", "his", "the harbour master"),
    ("Sabine", "she", "her", "her", "the doctor"),
    ("Jory", "he", "him", "his", "the shepherd boy"),
]

PLACES = [
    ("the harbour", "where the boats knocked softly against the stones"),
    ("the mill by the river", "where the wheel turned slowly in the brown water"),
    ("the market square", "where the stalls stood in two long rows"),
    ("the lighthouse", "where the stairs climbed round and round to the lamp"),
    ("the schoolhouse", "where the benches were worn smooth by many hands"),
    ("the bakery", "where the ovens kept the walls warm all night"),
    ("the old bridge", "where the river ran fast and loud under the arches"),
    ("the orchard on the hill", "where the apple trees leaned away from the wind"),
    ("the chapel yard", "where the grass grew long between the grey stones"),
    ("the clock tower", "where the great wheels ticked above the town"),
]

TIMES = [
    "In the early morning",
    "Just after dawn",
    "At noon",
    "In the middle of the afternoon",
    "Towards evening",
    "When the sun went down",
    "Late at night",
    "On the first day of spring",
    "On a cold winter morning",
    "On a long summer evening",
]

WEATHER = [
    "the sky was clear and pale",
    "a thin rain was falling",
    "the wind came hard from the sea",
    "a white fog lay over the water",
    "the air was still and warm",
    "clouds were moving quickly over the hills",
    "snow had settled on the roofs",
    "the light was soft and golden",
]

OBJECTS = [
    "a basket of bread",
    "a small brass key",
    "a letter with a red seal",
    "a coil of rope",
    "a lantern",
    "a jar of honey",
    "a wooden box",
    "a bundle of dry herbs",
    "an old map of the coast",
    "a loaf still warm from the oven",
    "a blue scarf",
    "a broken clock",
]

WALK = ["walked", "hurried", "wandered", "went", "made the long way"]
FEELINGS = ["tired", "glad", "worried", "calm", "restless", "hopeful", "quiet", "curious"]
SOUNDS = [
    "the bell in the clock tower",
    "gulls crying over the water",
    "a dog barking somewhere behind the houses",
    "the creak of a cart on the road",
    "children singing in the lane",
    "the sea breaking on the rocks",
]
TASKS = [
    "mended the torn sail",
    "swept the floor and opened the shutters",
    "counted the coins in the tin",
    "lit the lamp and trimmed the wick",
    "wrote a short note and folded it twice",
    "stacked the wood beside the door",
    "fed the hens and filled the water trough",
    "set the table for two",
    "wound the clock and listened to it tick",
    "checked the boats one by one",
]
SAYINGS = [
    "The tide will turn before supper",
    "Nothing good is ever done in a hurry",
    "We shall need more bread tomorrow",
    "The road is long, but it is not hard",
    "Someone has left the gate open again",
    "I think the weather is about to change",
    "You can keep it, I have another one",
    "Tell me what you saw on the hill",
    "The lamp must be lit before dark",
    "It is too late to go back now",
    "Come inside, the kettle is on the fire",
    "Every clock in this town runs a little slow",
]
ENDINGS = [
    "Then {s} went home and slept until morning.",
    "After that the day passed quietly.",
    "By the time {s} left, the light had changed.",
    "{S} smiled and said nothing more about it.",
    "The town was quiet again, and {s} was glad of it.",
    "Later {s} would remember that day for a long time.",
    "It was a small thing, but it made {o} happy.",
    "When the work was done, {s} sat down by the fire.",
]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def scene(rng: random.Random) -> str:
    """One paragraph about one person at one place and time."""
    name, s, o, p, trade = rng.choice(PEOPLE)
    place, detail = rng.choice(PLACES)
    obj = rng.choice(OBJECTS)
    sentences = [
        f"{rng.choice(TIMES)}, {name}, {trade}, {rng.choice(WALK)} to {place}, {detail}.",
        f"{_cap(rng.choice(WEATHER))}, and {s} felt {rng.choice(FEELINGS)}.",
    ]
    if rng.random() < 0.6:
        sentences.append(f"{_cap(s)} carried {obj} under {p} arm.")
    task_a, task_b = rng.sample(TASKS, 2)
    chores = [
        f"For a while {s} listened to {rng.choice(SOUNDS)}.",
        f"{_cap(s)} {task_a}.",
        f"{_cap(s)} {task_b}.",
    ]
    rng.shuffle(chores)
    sentences += chores[: rng.randint(1, 2)]
    if rng.random() < 0.7:
        f_name, f_s, _, _, _ = rng.choice([q for q in PEOPLE if q[0] != name])
        sentences.append(f"There {s} met {f_name}, who was waiting by the door.")
        sentences.append(f'"{rng.choice(SAYINGS)}," said {name}.')
        sentences.append(f'"{rng.choice(SAYINGS)}," {f_name} answered, and {f_s} laughed.')
        if rng.random() < 0.5:
            sentences.append(f"{_cap(s)} gave {obj} to {f_name}, who thanked {o} twice.")
    else:
        sentences.append(f"Nobody else came to {place} that day.")
        sentences.append(f'"{rng.choice(SAYINGS)}," {name} said quietly.')
    sentences.append(rng.choice(ENDINGS).format(s=s, S=_cap(s), o=o))
    return " ".join(sentences)


def generate(seed: int = SEED, target_bytes: int = TARGET_BYTES) -> str:
    """Return the corpus: one paragraph per line, blank lines between, ending in a newline.

    Paragraphs are not wrapped: a line break inside a sentence would make the model count
    characters to the margin, which a small model cannot do and which derails its samples.
    """
    rng = random.Random(seed)
    paragraphs: list[str] = []
    size = 0
    while size < target_bytes:
        para = scene(rng)
        paragraphs.append(para)
        size += len(para) + 2
    return "\n\n".join(paragraphs) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        same = CORPUS_PATH.read_text(encoding="utf-8") == text
        print("corpus.txt is up to date" if same else "corpus.txt differs from the generator")
        return 0 if same else 1
    CORPUS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {CORPUS_PATH} ({len(text.encode())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
