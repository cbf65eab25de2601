"""Attention x entropy token scores, word merging and keyword choice on hand-written inputs with exact answers."""
from __future__ import annotations

import math

import numpy as np

from features.query_scoring import attention_scores, entropies, keywords, merge_words, naive_query


def test_attention_score_is_the_max_over_later_generated_tokens_only():
    # 2 prompt tokens, 3 generated (rows: who attends; columns: to whom)
    a = np.array([[1.0, 0.0, 0.0, 0.0, 0.0],
                  [0.5, 0.5, 0.0, 0.0, 0.0],
                  [0.1, 0.2, 0.7, 0.0, 0.0],      # generated token 0 attends to itself: not "later"
                  [0.1, 0.1, 0.6, 0.2, 0.0],      # generated token 1
                  [0.2, 0.1, 0.3, 0.4, 0.0]])     # generated token 2
    s = attention_scores(a, start=2)
    assert s.tolist() == [0.6, 0.4, 0.0]            # max(0.6, 0.3); 0.4; the last has no later token


def test_entropy_in_nats():
    logits = np.array([[0.0, 0.0], [0.0, math.log(3.0)], [100.0, 0.0]])
    e = entropies(logits)
    p = np.array([0.25, 0.75])
    assert np.allclose(e, [math.log(2), -(p * np.log(p)).sum(), 0.0], atol=1e-9)


def test_sub_words_merge_by_average_and_punctuation_stands_alone():
    pieces = [" The", " mo", "istur", "izer", "'s", " hy", "dr", "ating", ",", " dry", " skin", "."]
    words = merge_words(pieces, np.arange(12.0))
    assert words == [("The", 0.0), ("moisturizer's", 2.5), ("hydrating", 6.0), (",", 8.0), ("dry", 9.0),
                     ("skin", 10.0), (".", 11.0)]
    assert merge_words([" anti", "-", "aging"], np.array([1.0, 2.0, 3.0])) == [("anti", 1.0), ("-", 2.0),
                                                                             ("aging", 3.0)]


def test_keywords_drop_stop_words_numbers_punctuation_keep_first_appearance_order():
    words = [("The", 9.0), ("shopper", 8.0), ("needs", 7.0), ("a", 9.0), ("hydrating", 5.0), ("night", 1.0),
             ("cream", 6.0), ("for", 9.0), ("dry", 4.0), (",", 9.0), ("24", 9.0), ("Cream", 2.0), ("skin", 3.0)]
    assert keywords(words, 3) == ["hydrating", "cream", "dry"]   # best three, in the order they appear
    assert keywords(words, 10) == ["hydrating", "night", "cream", "dry", "skin"]
    assert keywords([], 3) == []


def test_naive_query_is_the_task_and_the_newest_title():
    assert naive_query("  Argan   Oil ") == "what should this user buy next Argan Oil"
