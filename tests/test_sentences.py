"""Sentence splitting for speech: a table of tricky answers, each fed whole, character by
character and in random chunks; the sentences must not depend on the chunking."""

from __future__ import annotations

import random

import pytest

from actors.dialogue.sentences import Sentence, SentenceSplitter, code_spoken, to_spoken

# (id, answer, expected sentences, first_clause_chars). An expected sentence is its display
# text, or (display, spoken) when TTS must say something else.
Expected = list[str | tuple[str, str]]
CASES: list[tuple[str, str, Expected, int]] = [
    ("english", "Hello there. How are you? I'm fine!",
     ["Hello there.", "How are you?", "I'm fine!"], 24),
    ("repeated marks", "Really?! Yes!!! Ok.", ["Really?!", "Yes!!!", "Ok."], 24),
    ("semicolons", "I came; I saw; I won.", ["I came;", "I saw;", "I won."], 24),
    ("no final mark", "no punctuation at all", ["no punctuation at all"], 24),
    ("empty", "", [], 24),
    ("blank lines only", "  \n\n \n", [], 24),
    ("decimal", "Pi is about 3.14. That's it.", ["Pi is about 3.14.", "That's it."], 24),
    ("thousands", "We sold 1,000 units. Great.", ["We sold 1,000 units.", "Great."], 24),
    ("price version time", "It costs $4.99 now. Upgrade to v1.2.3 today! Meet at 10:30. Ok?",
     ["It costs $4.99 now.", "Upgrade to v1.2.3 today!", "Meet at 10:30.", "Ok?"], 24),
    ("number ends sentence", "Version 2. Next step.", ["Version 2.", "Next step."], 24),
    ("titles", "Mr. Smith met Dr. Jones at St. Mary's. They talked.",
     ["Mr. Smith met Dr. Jones at St. Mary's.", "They talked."], 24),
    ("mrs prof vs", "Mrs. Lee vs. Prof. Kim. Who won?", ["Mrs. Lee vs. Prof. Kim.", "Who won?"], 24),
    ("e.g. i.e.", "Use e.g. apples or i.e. red ones. Thanks.",
     ["Use e.g. apples or i.e. red ones.", "Thanks."], 24),
    ("u.s.", "The U.S. economy grew. Next.", ["The U.S. economy grew.", "Next."], 24),
    ("etc then capital", "Apples, pears, etc. Then we left.",
     ["Apples, pears, etc.", "Then we left."], 24),
    ("etc mid sentence", "I like cats, dogs, etc. and more.", ["I like cats, dogs, etc. and more."], 24),
    ("no. before number", "No. 5 is mine. No. I disagree.", ["No. 5 is mine.", "No.", "I disagree."], 24),
    ("initials", "J. K. Rowling wrote it. Nice.", ["J. K. Rowling wrote it.", "Nice."], 24),
    ("urls and email", "Visit https://example.com/a.b?x=1 for more. Or email john.doe@example.com. Bye!",
     ["Visit https://example.com/a.b?x=1 for more.", "Or email john.doe@example.com.", "Bye!"], 24),
    ("url ends sentence", "See https://example.com. Then go.",
     ["See https://example.com.", "Then go."], 24),
    ("ellipsis", "Well... let me think. Hmm… Okay, sure.",
     ["Well... let me think.", "Hmm…", "Okay, sure."], 24),
    ("ellipsis at end", "And then...", ["And then..."], 24),
    ("quotes and brackets", 'He said "Stop." Then he left. (It was late.) Fine.',
     ['He said "Stop."', "Then he left.", "(It was late.)", "Fine."], 24),
    ("question in brackets", "(Really?) Yes.", ["(Really?)", "Yes."], 24),
    ("curly quotes", "She said “Go.” We went.", ["She said “Go.”", "We went."], 24),
    ("chinese", "你好！今天天气很好。我们去公园吧？好的；走吧。",
     ["你好！", "今天天气很好。", "我们去公园吧？", "好的；", "走吧。"], 24),
    ("chinese quote", "他说：“好的。”然后走了。", ["他说：“好的。”", "然后走了。"], 24),
    ("chinese ellipsis", "我想想……好吧。", ["我想想……好吧。"], 24),
    ("chinese first clause",
     "今天我们来聊一聊人工智能在日常生活里的各种应用场景与未来发展，比如语音助手，还有翻译。",
     ["今天我们来聊一聊人工智能在日常生活里的各种应用场景与未来发展，", "比如语音助手，还有翻译。"], 24),
    ("chinese short clause", "好的，我来帮你查一下。", ["好的，我来帮你查一下。"], 24),
    ("mixed", "我用 Python 3.11 写代码。It works. 很好！",
     ["我用 Python 3.11 写代码。", "It works.", "很好！"], 24),
    ("period before cjk", "OK.好的。", ["OK.", "好的。"], 24),
    ("first clause", "When you get to the station tomorrow morning, turn left, then walk on, and look.",
     ["When you get to the station tomorrow morning,", "turn left, then walk on, and look."], 24),
    ("first clause short", "Yes, of course. Sure, I can help with that one right now, just wait.",
     ["Yes, of course.", "Sure, I can help with that one right now, just wait."], 24),
    ("first clause threshold", "Alpha, beta gamma delta, epsilon.",
     ["Alpha, beta gamma delta,", "epsilon."], 10),
    ("first clause not in numbers", "The population grew to 1,234,567 people over ten years, a lot.",
     ["The population grew to 1,234,567 people over ten years,", "a lot."], 24),
    ("first clause after skipped emoji", "🎉\nWhen you get to the station tomorrow morning, turn left.",
     ["When you get to the station tomorrow morning,", "turn left."], 24),
    ("markdown inline",
     "**Bold** and *italic* and `code`. See [the docs](https://x.y/z.html). ~~Old~~ new.",
     [("**Bold** and *italic* and `code`.", "Bold and italic and code."),
      ("See [the docs](https://x.y/z.html).", "See the docs."), ("~~Old~~ new.", "Old new.")], 24),
    ("link text with abbreviation", "Read [e.g. this](https://a.b/c.d). Then go.",
     [("Read [e.g. this](https://a.b/c.d).", "Read e.g. this."), "Then go."], 24),
    ("bold split inside", "**First point. Second point.** Done.",
     [("**First point.", "First point."), ("Second point.**", "Second point."), "Done."], 24),
    ("headings and lists",
     "# Title\nSome intro:\n- first item\n* second item\n1. step one\n2. **Step two.** Do it.\n",
     [("# Title", "Title"), "Some intro:", ("- first item", "first item"),
      ("* second item", "second item"), "1. step one", ("2. **Step two.**", "2. Step two."),
      "Do it."], 24),
    ("paragraphs", "First paragraph without a period\n\nSecond paragraph.",
     ["First paragraph without a period", "Second paragraph."], 24),
    ("block quote and rule", "> Quoted words.\n---\nAfter.",
     [("> Quoted words.", "Quoted words."), "After."], 24),
    ("table", "| a | b |\n|---|---|\n| 1 | 2 |\n", [("| a | b |", "a, b"), ("| 1 | 2 |", "1, 2")], 24),
    ("code fence", "Here is code:\n```python\nx = 3.14. y\nprint(x)! ok\n```\nThat's it.",
     ["Here is code:", "That's it."], 24),
    ("code fence right after a period", "Run this.```sh\necho a. b\n``` Done.",
     ["Run this.", "Done."], 24),
    ("unclosed fence", "Run:\n```sh\nls -la. now\n", ["Run:"], 24),
    ("inline triple backticks", "Use ```a.b()``` here. Done.",
     [("Use ```a.b()``` here.", "Use here."), "Done."], 24),
    ("emoji", "Great job! 🎉🎉 You did it 👍. 😀",
     ["Great job!", ("🎉🎉 You did it 👍.", "You did it.")], 24),
    ("emoji sequences", "Hi 👨‍👩‍👧 from 🇨🇳! ✅ Done 1️⃣.",
     [("Hi 👨‍👩‍👧 from 🇨🇳!", "Hi from!"), ("✅ Done 1️⃣.", "Done 1.")], 24),
    ("only emoji and marks", "👍\n**\n---\n", [], 24),
]


def _expected(items: Expected) -> list[Sentence]:
    return [Sentence(item, item) if isinstance(item, str) else Sentence(*item) for item in items]


def _split(chunks: list[str], first_clause_chars: int) -> list[Sentence]:
    splitter = SentenceSplitter(first_clause_chars=first_clause_chars)
    out: list[Sentence] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.flush()


def _random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks, i = [], 0
    while i < len(text):
        size = rng.choice([1, 1, 2, 3, 5, 8, 13])
        chunks.append(text[i:i + size])
        i += size
    return chunks


@pytest.mark.parametrize(("text", "expected", "first_clause_chars"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_split(text: str, expected: Expected, first_clause_chars: int) -> None:
    want = _expected(expected)
    assert _split([text], first_clause_chars) == want
    assert _split(list(text), first_clause_chars) == want, "fed character by character"
    rng = random.Random(text)
    for _ in range(25):
        chunks = _random_chunks(text, rng)
        assert _split(chunks, first_clause_chars) == want, f"fed as {chunks!r}"


def test_sentences_come_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Pi is 3.") == []  # "3." may become "3.14": held
    assert splitter.feed("14. ") == [Sentence("Pi is 3.14.", "Pi is 3.14.")]
    assert splitter.feed("Next one!") == []  # "!" may become "!!"
    assert splitter.feed(" And") == [Sentence("Next one!", "Next one!")]
    assert splitter.feed(" more\n") == [Sentence("And more", "And more")]  # a newline cuts at once
    assert splitter.feed("你好。") == []
    assert splitter.feed("再见") == [Sentence("你好。", "你好。")]
    assert splitter.flush() == [Sentence("再见", "再见")]


def test_first_clause_waits_for_the_character_after_the_comma() -> None:
    splitter = SentenceSplitter(first_clause_chars=5)
    assert splitter.feed("Hello world,") == []  # could still be "world,000"
    assert splitter.feed(" friend") == [Sentence("Hello world,", "Hello world,")]
    assert splitter.feed(", again and again, ok.") == []  # only the first sentence is cut early
    assert splitter.flush() == [Sentence("friend, again and again, ok.", "friend, again and again, ok.")]


def test_code_block_is_held_until_it_closes() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Code:\n```\na. b. c.\n") == [Sentence("Code:", "Code:")]
    assert splitter.feed("d. e.\n") == []
    assert splitter.feed("```\nAfter it. Yes") == [Sentence("After it.", "After it.")]
    assert splitter.flush() == [Sentence("Yes", "Yes")]


def test_flush_resets_for_the_next_answer() -> None:
    splitter = SentenceSplitter(first_clause_chars=5)
    assert splitter.feed("One, two three four. Done") == [Sentence("One, two three four.",
                                                                    "One, two three four.")]
    assert splitter.flush() == [Sentence("Done", "Done")]
    # A new answer: the first-clause rule applies again, no text is left over.
    assert splitter.feed("Hello world, ") == [Sentence("Hello world,", "Hello world,")]
    assert splitter.flush() == []


@pytest.mark.parametrize(("markdown", "spoken"), [
    ("**bold** __strong__ *em* _em_", "bold strong em em"),
    ("snake_case_name and 5 * 3 * 2 and 5*3", "snake_case_name and 5 * 3 * 2 and 5*3"),
    ("`inline code`", "inline code"),
    ("## Heading", "Heading"),
    ("  - nested bullet", "nested bullet"),
    ("[link text](https://e.com/x.y) and ![a cat](cat.png)", "link text and a cat"),
    ("<https://e.com> <br> end", "https://e.com end"),
    ("before ```py\nx = 1\n``` after", "before after"),
    ("unclosed ```py\nx = 1", "unclosed"),
    ("spaced   out\n\twhite  space", "spaced out white space"),
    ("emoji 😀👍🏽 ❤️ ⭐ end", "emoji end"),
    ("👋 !", ""),
    ("***", ""),
    ("", ""),
])
def test_to_spoken(markdown: str, spoken: str) -> None:
    assert to_spoken(markdown) == spoken


_ALPHABET = ["a", "B", "e.g", "No", "etc", "Mr", " ", " ", "\n", ".", ".", "!", "?", ";", ",", "，",
             "。", "！", "…", "3", "14", "\"", "”", ")", "*", "**", "_", "`", "```", "你好", "👍",
             "# ", "- ", "1", "http://x.y", "~~", "[l](u.v)", "|"]


@pytest.mark.parametrize("seed", range(300))
def test_chunking_never_changes_the_result_of_random_text(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 60)))
    first_clause_chars = rng.choice([0, 5, 24])
    whole = _split([text], first_clause_chars)
    assert _split(list(text), first_clause_chars) == whole
    assert _split(_random_chunks(text, rng), first_clause_chars) == whole
    for sentence in whole:
        assert sentence.spoken and sentence.display


@pytest.mark.parametrize(("answer", "spoken"), [
    ("```python\nprint(17 * 23)\n```", "print(17 * 23)"),
    ("```391```", "391"),
    ("```\n```", ""),
    ("no code here", ""),
])
def test_code_spoken_reads_the_code_of_an_answer_that_is_only_code(answer: str, spoken: str) -> None:
    assert code_spoken(answer) == spoken
