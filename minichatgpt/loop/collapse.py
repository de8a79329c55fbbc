"""Collapse and diversity of a set of responses: what a reward-model score does not show.

A policy that has found the reward model's favourite word puts it into most of its responses, repeats whole
responses and writes shorter ones, while its score keeps rising. Each function takes the response texts
(without their prompts) and returns a number that a reader can check by hand on a short list.
"""
import re
from collections import Counter

# Function words: articles, pronouns, auxiliaries, prepositions, conjunctions. What is left are content words,
# the ones a reward model can love.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves one ones s t
""".split())

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text):
    """Lower-case words of a text: letters with inner apostrophes ("it's"); digits and punctuation dropped."""
    return WORD.findall(text.lower().replace("\u2019", "'"))


def top_content_word(texts):
    """The content word found in the most responses -> (word, share of responses that contain it).

    A response counts once however often it repeats the word. ("", 0.0) when no response has a content word.
    """
    if not texts:
        return "", 0.0
    counts = Counter(w for t in texts for w in set(words(t)) if w not in STOPWORDS)
    if not counts:
        return "", 0.0
    word, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))    # ties: alphabetically first
    return word, n / len(texts)


def unique_share(texts):
    """Distinct responses / responses, after lower-casing and collapsing whitespace (1 = no two alike)."""
    if not texts:
        return 0.0
    return len({" ".join(t.lower().split()) for t in texts}) / len(texts)


def distinct_n(texts, n):
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over a set of texts (1 = no repeats)."""
    grams = [tuple(ws[i:i + n]) for ws in (t.lower().split() for t in texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def collapse_metrics(texts):
    """Every measure above on one set of response texts -> dict."""
    word, share = top_content_word(texts)
    return {"top_word": word, "top_word_share": share, "unique_share": unique_share(texts),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
