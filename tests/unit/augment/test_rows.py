"""`peftkit augment`'s rows: seeded edits, dedup, leakage and the teacher's consistency filter."""

from __future__ import annotations


def test_edits_are_seeded_and_use_only_the_sentences_words():
    from peftkit.augment.rows import edited_rows

    texts = ["a gripping , funny and moving film", "dull and far too long", "great"]
    labels = [1, 0, 1]
    first = edited_rows(texts, labels, copies=3, seed=7, fraction=0.2)
    assert first == edited_rows(texts, labels, copies=3, seed=7, fraction=0.2)
    assert first != edited_rows(texts, labels, copies=3, seed=8, fraction=0.2)
    assert [r["label"] for r in first] == [y for y in labels for _ in range(3)]
    for row, text in zip(first, [t for t in texts for _ in range(3)]):
        assert set(row["text"].split()) <= set(text.split())
        assert row["source"] in ("edit:delete", "edit:swap", "edit:insert")
    assert {r["source"] for r in edited_rows(texts * 20, labels * 20, 1, 0, 0.2)} == {
        "edit:delete", "edit:swap", "edit:insert"}


def test_leakage_and_duplicates_are_dropped_and_counted():
    from peftkit.augment.rows import filter_rows
    from peftkit.recipe import Recipe

    rows = [{"text": "A Fine Film!", "label": 1, "source": "edit:swap"},        # an eval sentence, other case
            {"text": "dull  and long", "label": 0, "source": "edit:delete"},     # a training row, other spacing
            {"text": "new words here", "label": 1, "source": "paraphrase:m"},
            {"text": "New words, here.", "label": 1, "source": "edit:insert"}]  # the row before, normalised
    kept, counts = filter_rows(rows, ["dull and long"], ["a fine film ."], None, Recipe())
    assert [r["text"] for r in kept] == ["new words here"]
    assert counts["edit"] == {"generated": 3, "kept": 0, "dropped_eval_leak": 1, "dropped_duplicate": 2}
    assert counts["paraphrase"] == {"generated": 1, "kept": 1}


def test_consistency_filter_keeps_what_the_teacher_is_sure_of(tiny_run, one_torch_thread):
    from peftkit.augment.rows import consistency_filter, filter_rows
    from peftkit.inference.teacher import teacher_probabilities
    from peftkit.recipe import Recipe
    from peftkit.runs.read import load_run

    _, run_dir = tiny_run
    run_dir, teacher_recipe = load_run(run_dir)
    texts = ["a good film", "a bad film", "it is fine", "boring", "loved it", "hated it"]
    rows = [{"text": t, "label": i % 2, "source": "edit:swap"} for i, t in enumerate(texts)]
    probs = teacher_probabilities(run_dir, teacher_recipe, texts).tolist()
    own = [p[r["label"]] for p, r in zip(probs, rows)]
    recipe = Recipe()
    recipe.augment.min_confidence = sorted(own)[3]
    counts = {"edit": __import__("collections").Counter()}
    kept = consistency_filter(rows, (run_dir, teacher_recipe, None), recipe, counts)
    assert [r["text"] for r in kept] == [r["text"] for r, p in zip(rows, own) if p >= recipe.augment.min_confidence]
    assert counts["edit"]["dropped_low_confidence"] == len(rows) - len(kept) > 0
    assert filter_rows(rows, [], [], None, recipe)[0] == rows  # no teacher: no filter
