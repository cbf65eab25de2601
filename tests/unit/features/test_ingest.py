"""features.ingest line parsers on hand-written lines of the 2014, 2018 and 2023 Amazon dumps."""
from __future__ import annotations

import json

import pytest

from features.ingest import parse_meta, parse_review, parse_sequence_line

# ----------------------------------------------------------------------------- reviews


def test_review_2014():
    line = json.dumps({"reviewerID": "A1YJEY40YUW4SE", "asin": "7806397051", "reviewerName": "Andrea",
                       "helpful": [3, 4], "reviewText": "Very oily and creamy.", "overall": 1.0,
                       "summary": "Don't waste your money", "unixReviewTime": 1391141 * 1000,
                       "reviewTime": "01 30, 2014"})
    assert parse_review(line) == {"user_id": "A1YJEY40YUW4SE", "item_id": "7806397051",
                                  "timestamp": 1391141000, "rating": 1.0}


def test_review_2014_python_literal_line():
    line = "{'reviewerID': 'A2', 'asin': 'B01', 'overall': 4.0, 'unixReviewTime': 1388966400}"
    assert parse_review(line) == {"user_id": "A2", "item_id": "B01", "timestamp": 1388966400, "rating": 4.0}


def test_review_2018():
    line = ('{"overall": 5.0, "verified": true, "reviewTime": "09 1, 2016", "reviewerID": "A3CIUOJXQ5VDQ2", '
            '"asin": "B0000530HU", "style": {"Size:": " 7.0 oz"}, "reviewerName": "Shelly F", '
            '"reviewText": "As advertised.", "summary": "Five Stars", "unixReviewTime": 1472688000}')
    assert parse_review(line) == {"user_id": "A3CIUOJXQ5VDQ2", "item_id": "B0000530HU",
                                  "timestamp": 1472688000, "rating": 5.0}


def test_review_2018_without_rating():
    line = '{"reviewerID": "A9", "asin": "B9", "unixReviewTime": 1472688000}'
    assert parse_review(line)["rating"] is None


def test_review_2023_uses_parent_asin_and_ms_timestamps():
    line = ('{"rating": 5.0, "title": "Such a lovely scent", "text": "...", "images": [], '
            '"asin": "B00YQ6X8EO", "parent_asin": "B00YQ6X8EP", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", '
            '"timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": true}')
    assert parse_review(line) == {"user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "item_id": "B00YQ6X8EP",
                                  "timestamp": 1588687728, "rating": 5.0}


def test_review_2023_falls_back_to_asin_and_keeps_second_timestamps():
    line = '{"rating": 3, "asin": "B01", "parent_asin": null, "user_id": "U1", "timestamp": 1588687728}'
    assert parse_review(line) == {"user_id": "U1", "item_id": "B01", "timestamp": 1588687728, "rating": 3.0}


def test_review_ids_are_strings():
    line = '{"reviewerID": 17, "asin": 42, "unixReviewTime": "1472688000", "overall": "4"}'
    assert parse_review(line) == {"user_id": "17", "item_id": "42", "timestamp": 1472688000, "rating": 4.0}


@pytest.mark.parametrize("line", ["", "   ", "\n"])
def test_blank_review_lines_give_none(line):
    assert parse_review(line) is None


def test_review_with_unknown_keys_fails_naming_them():
    with pytest.raises(ValueError, match="unknown review record with keys"):
        parse_review('{"who": "U1", "what": "B1"}')


@pytest.mark.parametrize("line", [
    '{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 13',   # truncated JSON
    "not a review",
    "{'reviewerID': 'A1'",                                        # truncated Python literal
])
def test_unparsable_review_raises_value_error(line):
    with pytest.raises(ValueError):
        parse_review(line)


# ----------------------------------------------------------------------------- metadata


def test_meta_2014_python_literal():
    line = ("{'asin': 'B01', 'title': 'X', 'categories': [['Beauty', 'Skin Care']], 'price': 12.5, "
            "'brand': 'Y', 'salesRank': {'Beauty': 123}, 'imUrl': 'http://x/y.jpg'}")
    assert parse_meta(line) == {"item_id": "B01", "title": "X", "brand": "Y",
                                "categories": ["Beauty", "Skin Care"], "description": None, "price": 12.5}


def test_meta_2014_several_category_paths_are_flattened_without_repeats():
    line = ("{'asin': 'B02', 'categories': [['Beauty', 'Skin Care', 'Face'], ['Beauty', 'Makeup']], "
            "'description': 'A cream.'}")
    assert parse_meta(line) == {"item_id": "B02", "title": None, "brand": None,
                                "categories": ["Beauty", "Skin Care", "Face", "Makeup"],
                                "description": "A cream.", "price": None}


def test_meta_2018_json():
    line = json.dumps({"asin": "B03", "title": "Hair Oil", "category": ["All Beauty", "Hair Care", ""],
                       "price": "$12.99", "brand": "Z", "description": ["Line one.", "Line two."],
                       "also_buy": ["B04"], "rank": "1,234 in Beauty"})
    assert parse_meta(line) == {"item_id": "B03", "title": "Hair Oil", "brand": "Z",
                                "categories": ["All Beauty", "Hair Care"],
                                "description": "Line one. Line two.", "price": 12.99}


@pytest.mark.parametrize("text,price", [
    ("$12.99", 12.99),
    ("$7", 7.0),
    ("$12.99 - $25.00", 12.99),    # a range: the lower bound
    ("$1,299.00", 1299.0),         # thousands separator
    ("$1,299", 1299.0),
    ("12,50 EUR", 12.5),           # decimal comma
    ("", None),
    (None, None),
    ("call for price", None),
    (3, 3.0),
])
def test_meta_price_strings(text, price):
    line = json.dumps({"asin": "B05", "price": text})
    assert parse_meta(line)["price"] == price


def test_meta_2023_json():
    line = json.dumps({"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner",
                       "average_rating": 4.8, "rating_number": 10, "features": [],
                       "description": [], "price": None, "images": [], "videos": [],
                       "store": "Howard Products", "categories": [], "details": {"Brand": "Howard"},
                       "parent_asin": "B01CUPMQZE", "bought_together": None})
    assert parse_meta(line) == {"item_id": "B01CUPMQZE", "title": "Howard LC0008 Leather Conditioner",
                                "brand": "Howard Products", "categories": [], "description": None,
                                "price": None}


def test_meta_2023_with_categories_and_float_price():
    line = json.dumps({"parent_asin": "B0P", "title": "Serum", "store": "Glow", "price": 24.0,
                       "categories": ["Beauty & Personal Care", "Skin Care", "Face", "Serums"],
                       "description": ["For all skin types."]})
    assert parse_meta(line) == {"item_id": "B0P", "title": "Serum", "brand": "Glow",
                                "categories": ["Beauty & Personal Care", "Skin Care", "Face", "Serums"],
                                "description": "For all skin types.", "price": 24.0}


def test_meta_brand_wins_over_store_and_blank_strings_are_none():
    line = json.dumps({"asin": "B06", "brand": "Brand", "store": "Store", "title": "  "})
    out = parse_meta(line)
    assert out["brand"] == "Brand" and out["title"] is None


def test_meta_without_an_id_fails():
    with pytest.raises(ValueError, match="neither 'asin' nor 'parent_asin'"):
        parse_meta('{"title": "orphan"}')


def test_blank_meta_line_gives_none():
    assert parse_meta("  ") is None


@pytest.mark.parametrize("line", ["{'asin': 'B01', 'title': 'X'", "garbage"])
def test_unparsable_meta_raises_value_error(line):
    with pytest.raises(ValueError):
        parse_meta(line)


# ----------------------------------------------------------------------------- sequence files


def test_sequence_line():
    assert parse_sequence_line("7 3 12 3\n") == [("7", "3", 0), ("7", "12", 1), ("7", "3", 2)]


def test_blank_sequence_line_gives_no_rows():
    assert parse_sequence_line("   \n") == []


def test_sequence_line_without_items_fails():
    with pytest.raises(ValueError, match="user 7 has no items"):
        parse_sequence_line("7")


@pytest.mark.parametrize("line,token", [("7 3 x", "x"), ("7 3 2.5", "2.5"), ("u7 3 4", "u7"), ("7 -3", "-3")])
def test_sequence_line_with_a_bad_token_names_it(line, token):
    with pytest.raises(ValueError, match=f"token '{token}' is not an integer id"):
        parse_sequence_line(line)


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "42"])
def test_a_line_that_is_not_an_object_raises_value_error(line):
    with pytest.raises(ValueError, match="expected an object"):
        parse_review(line)
    with pytest.raises(ValueError, match="expected an object"):
        parse_meta(line)
