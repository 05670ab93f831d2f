"""IFEval-style instruction-following prompts written for this project, scored by lm-eval's checkers.

    from workbench.instruction_prompts import instruction_prompts
    rows = instruction_prompts()   # [{"key", "prompt", "instruction_id_list", "kwargs"}, ...]

Google's IFEval prompts are not shipped in any package this project can install, so these were
written here, in the same form: a plain writing request followed by one or two verifiable
instructions, each stated in words the checker can verify. `instruction_id_list` and `kwargs`
use the ids and argument names of `lm_eval.tasks.ifeval.instructions_registry`, so lm-eval's
own `process_results` scores them (strict and loose, prompt- and instruction-level).

Every one of the 25 instruction types of lm-eval's registry is used. Each type is applied to
4 requests (100 single-instruction prompts), and 24 prompts combine two compatible types: 124
prompts in all. The list is built deterministically (no randomness), so its order and keys
are stable.
"""

from __future__ import annotations

# Plain writing requests, each a complete sentence without a verifiable constraint.
REQUESTS = (
    "Write a short note to a neighbour asking them to water your plants while you are away.",
    "Describe how a bicycle gear system works to a ten-year-old.",
    "Write a product description for a reusable water bottle.",
    "Explain why the sky looks blue during the day.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Give advice to a student who is preparing for their first job interview.",
    "Write a review of an imaginary Italian restaurant called Luna.",
    "Explain the difference between weather and climate.",
    "Write a letter to a city council proposing more bicycle lanes.",
    "Describe a typical morning at a busy train station.",
    "Write a poem about the first snow of winter.",
    "Summarize the main benefits of regular exercise.",
    "Write an email to a colleague rescheduling a meeting to next Tuesday.",
    "Explain how a refrigerator keeps food cold.",
    "Write a short speech for the opening of a community library.",
    "Describe the life cycle of a butterfly.",
    "Write a blog post about learning to bake bread at home.",
    "Give instructions for planting a tomato seedling in a garden.",
    "Write a cover letter for a job as a museum guide.",
    "Explain what a budget is and why a family might keep one.",
    "Write a travel guide entry for a small fishing village.",
    "Describe the rules of chess for a complete beginner.",
    "Write a thank-you message to a teacher at the end of the school year.",
    "Explain how vaccines help the body fight disease.",
    "Write an advertisement for a weekend pottery class.",
)

# Yes/no questions, for the constrained-response instruction.
QUESTIONS = (
    "Is it a good idea to learn a second language as an adult?",
    "Should schools start later in the morning?",
    "Is a hot dog a sandwich?",
    "Can a person be both an introvert and a good public speaker?",
)

# Each instruction type: (instruction id, kwargs, the sentence that states it). One variant per
# use, chosen by the use's index, so the same type appears with different arguments.
def _variants(kind: str, i: int) -> tuple[dict, str]:
    if kind == "keywords:existence":
        pairs = [("garden", "morning"), ("simple", "careful"), ("history", "future"), ("friendly", "quiet")]
        a, b = pairs[i % len(pairs)]
        return {"keywords": [a, b]}, f'Include the keywords "{a}" and "{b}" in the response.'
    if kind == "keywords:frequency":
        kw, n = [("water", 3), ("light", 2), ("plan", 3), ("small", 2)][i % 4]
        return ({"keyword": kw, "frequency": n, "relation": "at least"},
                f'In your response, the word "{kw}" should appear at least {n} times.')
    if kind == "keywords:forbidden_words":
        words = [["very", "really"], ["good", "bad"], ["easy", "hard"], ["big", "small"]][i % 4]
        return ({"forbidden_words": words},
                f'Do not include the keywords "{words[0]}" or "{words[1]}" in the response.')
    if kind == "keywords:letter_frequency":
        letter, n = [("e", 20), ("a", 15), ("t", 12), ("o", 10)][i % 4]
        return ({"letter": letter, "let_frequency": n, "let_relation": "at least"},
                f'In your response, the letter "{letter}" should appear at least {n} times.')
    if kind == "language:response_language":
        code, name = [("fr", "French"), ("de", "German"), ("es", "Spanish"), ("it", "Italian")][i % 4]
        return ({"language": code},
                f"Your ENTIRE response should be in {name} language, no other language is allowed.")
    if kind == "length_constraints:number_sentences":
        n, rel = [(4, "less than"), (5, "at least"), (3, "less than"), (6, "at least")][i % 4]
        return ({"num_sentences": n, "relation": rel}, f"Your response should contain {rel} {n} sentences.")
    if kind == "length_constraints:number_paragraphs":
        n = [2, 3, 4, 2][i % 4]
        return ({"num_paragraphs": n},
                f"There should be {n} paragraphs. Paragraphs are separated with the markdown divider: ***")
    if kind == "length_constraints:number_words":
        n, rel = [(60, "less than"), (120, "at least"), (40, "less than"), (150, "at least")][i % 4]
        return ({"num_words": n, "relation": rel}, f"Answer with {rel} {n} words.")
    if kind == "length_constraints:nth_paragraph_first_word":
        n, nth, word = [(2, 2, "however"), (3, 1, "first"), (2, 1, "today"), (3, 3, "finally")][i % 4]
        return ({"num_paragraphs": n, "nth_paragraph": nth, "first_word": word},
                f"There should be {n} paragraphs. Paragraphs and only paragraphs are separated with each "
                f"other by two new lines as if it was '\\n\\n' in python. Paragraph {nth} must start with "
                f'the word "{word}".')
    if kind == "detectable_content:number_placeholders":
        n = [2, 3, 1, 2][i % 4]
        return ({"num_placeholders": n},
                f"The response must contain at least {n} placeholders represented by square brackets, "
                "such as [address].")
    if kind == "detectable_content:postscript":
        marker = ["P.S.", "P.P.S"][i % 2]
        return ({"postscript_marker": marker},
                f"At the end of your response, please explicitly add a postscript starting with {marker}")
    if kind == "detectable_format:number_bullet_lists":
        n = [3, 4, 2, 5][i % 4]
        return ({"num_bullets": n},
                f"Your answer must contain exactly {n} bullet points. Use the markdown bullet points "
                "such as:\n* This is point 1.\n* This is point 2")
    if kind == "detectable_format:constrained_response":
        return ({}, 'Answer with one of the following options: ("My answer is yes.", "My answer is no.", '
                    '"My answer is maybe.")')
    if kind == "detectable_format:number_highlighted_sections":
        n = [2, 3, 1, 2][i % 4]
        return ({"num_highlights": n},
                f"Highlight at least {n} sections in your answer with markdown, i.e. *highlighted section*.")
    if kind == "detectable_format:multiple_sections":
        spliter, n = [("Section", 3), ("SECTION", 2), ("Section", 4), ("SECTION", 3)][i % 4]
        return ({"section_spliter": spliter, "num_sections": n},
                f"Your response must have {n} sections. Mark the beginning of each section with "
                f"{spliter} X, such as:\n{spliter} 1\n[content of section 1]\n{spliter} 2\n[content of section 2]")
    if kind == "detectable_format:json_format":
        return ({}, "Wrap your entire output with JSON format. You can use markdown ticks such as ```.")
    if kind == "detectable_format:title":
        return ({}, "Your answer must contain a title, wrapped in double angular brackets, "
                    "such as <<poem of joy>>.")
    if kind == "combination:two_responses":
        return ({}, "Give two different responses. Responses and only responses should be separated "
                    "by 6 asterisk symbols: ******.")
    if kind == "combination:repeat_prompt":
        return ({"prompt_to_repeat": None},  # filled with the request by _prompt
                "First repeat the request word for word without change, then give your answer (1. do "
                "not say any words or characters before repeating the request; 2. the request you need "
                "to repeat does not include this sentence)")
    if kind == "startend:end_checker":
        phrase = ["Is there anything else I can help with?", "Any other questions?"][i % 2]
        return ({"end_phrase": phrase},
                f'Finish your response with this exact phrase "{phrase}". No other words should follow '
                "this phrase.")
    if kind == "change_case:capital_word_frequency":
        n, rel = [(3, "at least"), (2, "less than"), (5, "at least"), (4, "less than")][i % 4]
        return ({"capital_frequency": n, "capital_relation": rel},
                f"In your response, words with all capital letters should appear {rel} {n} times.")
    if kind == "change_case:english_capital":
        return ({}, "Your entire response should be in English, and in all capital letters.")
    if kind == "change_case:english_lowercase":
        return ({}, "Your entire response should be in English, and in all lowercase letters. "
                    "No capital letters are allowed.")
    if kind == "punctuation:no_comma":
        return ({}, "In your entire response, refrain from the use of any commas.")
    if kind == "startend:quotation":
        return ({}, "Wrap your entire response with double quotation marks.")
    raise KeyError(f"unknown instruction type {kind!r}")


INSTRUCTION_TYPES = (
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences",
    "length_constraints:number_paragraphs", "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word", "detectable_content:number_placeholders",
    "detectable_content:postscript", "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response", "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections", "detectable_format:json_format", "detectable_format:title",
    "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
    "change_case:capital_word_frequency", "change_case:english_capital",
    "change_case:english_lowercase", "punctuation:no_comma", "startend:quotation",
)

# Pairs that can both be satisfied by one response (no case, language or whole-output-format clash).
COMBINATIONS = (
    ("punctuation:no_comma", "length_constraints:number_words"),
    ("keywords:existence", "detectable_format:title"),
    ("change_case:english_lowercase", "detectable_content:postscript"),
    ("detectable_format:number_bullet_lists", "keywords:forbidden_words"),
    ("startend:end_checker", "length_constraints:number_sentences"),
    ("detectable_format:title", "punctuation:no_comma"),
    ("keywords:frequency", "detectable_format:number_highlighted_sections"),
    ("length_constraints:number_paragraphs", "keywords:existence"),
    ("detectable_content:number_placeholders", "startend:end_checker"),
    ("detectable_format:multiple_sections", "keywords:letter_frequency"),
    ("change_case:english_capital", "length_constraints:number_words"),
    ("detectable_content:postscript", "keywords:forbidden_words"),
    ("detectable_format:title", "length_constraints:number_sentences"),
    ("change_case:english_lowercase", "detectable_format:number_bullet_lists"),
    ("punctuation:no_comma", "detectable_content:number_placeholders"),
    ("keywords:existence", "startend:end_checker"),
    ("detectable_format:number_highlighted_sections", "length_constraints:number_words"),
    ("change_case:capital_word_frequency", "detectable_format:title"),
    ("keywords:letter_frequency", "detectable_content:postscript"),
    ("length_constraints:number_paragraphs", "punctuation:no_comma"),
    ("detectable_format:number_bullet_lists", "detectable_format:title"),
    ("keywords:frequency", "punctuation:no_comma"),
    ("startend:quotation", "keywords:existence"),
    ("detectable_format:json_format", "keywords:existence"),
)

USES_PER_TYPE = 4


def _prompt(key: int, request: str, kinds: tuple[str, ...], use: int) -> dict:
    ids, kwargs, sentences = [], [], []
    for kind in kinds:
        kw, sentence = _variants(kind, use)
        if kind == "combination:repeat_prompt":
            kw = {"prompt_to_repeat": request}
        ids.append(kind)
        kwargs.append(kw)
        sentences.append(sentence)
    return {"key": key, "prompt": " ".join([request, *sentences]),
            "instruction_id_list": ids, "kwargs": kwargs}


def instruction_prompts() -> list[dict]:
    """All prompts as IFEval rows: key, prompt, instruction_id_list, kwargs (one dict per id)."""
    rows = []
    for t, kind in enumerate(INSTRUCTION_TYPES):
        for use in range(USES_PER_TYPE):
            if kind == "detectable_format:constrained_response":
                request = QUESTIONS[use % len(QUESTIONS)]
            else:
                request = REQUESTS[(t * USES_PER_TYPE + use) % len(REQUESTS)]
            rows.append(_prompt(1000 + len(rows), request, (kind,), use))
    for c, kinds in enumerate(COMBINATIONS):
        request = REQUESTS[(7 * c + 3) % len(REQUESTS)]
        rows.append(_prompt(1000 + len(rows), request, kinds, c))
    return rows
