"""Prompts, metadata texts, content hashes and the degenerate-output check, on hand-written rows."""
from __future__ import annotations

from features import text as T

ITEM = {"item_id": "B1", "title": "Argan Oil Shampoo 250 ml", "brand": "Mane", "categories": ["Beauty", "Hair Care"],
        "description": "Cleans gently. " * 40, "price": 1299.5}


def test_item_prompt_holds_only_given_facts_and_asks_to_stick_to_them():
    msgs = T.item_messages(ITEM)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Title: Argan Oil Shampoo 250 ml" in user and "Brand: Mane" in user
    assert "Category: Beauty > Hair Care" in user and "Price: $1,299.50" in user
    assert user.count("Cleans") == 20 and "..." in user  # description clipped to 40 words
    assert "Use only the facts given" in msgs[0]["content"]


def test_missing_fields_and_unknown_category_are_left_out():
    user = T.item_messages({"title": "X lipstick", "categories": ["Unknown", "Makeup"], "price": float("nan")})[1]["content"]
    assert "Brand" not in user and "Price" not in user and "Details" not in user
    assert "Category: Makeup" in user


def test_user_prompt_is_newest_first_and_bounded():
    hist = [{"title": f"item {i}", "categories": ["Beauty", f"cat{i}"], "price": 10.0 + i} for i in range(20)]
    user = T.user_messages(hist, max_items=3)[1]["content"]
    lines = [ln for ln in user.splitlines() if ln.startswith("- ")]
    assert lines == ["- item 19 (cat19, $29.00)", "- item 18 (cat18, $28.00)", "- item 17 (cat17, $27.00)"]


def test_metadata_texts():
    assert T.item_metadata_text(ITEM).startswith("Title: Argan Oil Shampoo 250 ml. Brand: Mane.")
    assert T.user_metadata_text([{"title": "a"}, {"title": "b"}], max_items=1) == "b"


def test_content_hash_is_stable_and_sensitive():
    m = T.item_messages(ITEM)
    assert T.content_hash("v1", "model", m) == T.content_hash("v1", "model", T.item_messages(dict(ITEM)))
    assert T.content_hash("v1", "model", m) != T.content_hash("v2", "model", m)
    assert T.content_hash("v1", "model", m) != T.content_hash("v1", "other", m)
    assert T.content_hash("v1", "model", m) != T.content_hash("v1", "model", T.item_messages({**ITEM, "price": 1.0}))


def test_degenerate_outputs_are_recognised():
    assert T.degenerate_reason("") == "empty"
    assert T.degenerate_reason("   \n") == "empty"
    assert T.degenerate_reason("Nice shampoo.").startswith("too short")
    assert T.degenerate_reason("!!!! ???? #### $$$$ %%%% ^^^^ a b c d e") == "mostly non-word characters"
    assert T.degenerate_reason("the best the best " * 8) == "repetition loop"
    assert T.degenerate_reason("great " + "shampoo, " * 10 + "for dry and curly hair of all kinds, daily") \
        == "one word repeated"
    good = "A gentle argan oil shampoo from Mane for dry hair. It suits shoppers who want soft, shiny hair."
    assert T.degenerate_reason(good) is None
    # loops a small model fell into when writing reasons on a GPU (results/llmrec_beauty_gpu.json)
    assert T.degenerate_reason("Designed by renowned designers like Rembrand and Rembarlis, Rembralmirerembermire"
                               "rembermairewreemirereawreemirereawreerewreerwreererwrecerwrecherwrecrown crown") \
        == "repetition inside a word"
    assert T.degenerate_reason("Bamboo Shine Luminous Shines Luminari Conditioner is a high-quality, natural and "
                               "biodegradable Bamboo Shimmer Luminescent Shiner Shiny Shining Shininess Shined") \
        == "one stem repeated"
    # a catalogue name run together is long but does not loop; nor do a few words of one stem in a long text
    assert T.degenerate_reason("SODIAL(TM)2XProfessionalHairCuttingAndThinningScissorsShears is a high-end "
                               "haircutting and thinning scissors that offers professional services.") is None
    assert T.degenerate_reason("A moisturizing cream with a light moisturizer base that keeps moisture in; it "
                               "suits dry skin and shoppers who bought unscented lotions and balms before.") is None


def test_clean_output_drops_an_unfinished_last_sentence():
    assert T.clean_output("  One sentence.  Two sentences are cut") == "One sentence."
    assert T.clean_output("No sentence end at all") == "No sentence end at all"


def test_the_prompts_take_their_domain_words_and_category_style_from_the_config():
    """A new user's music data came back described as 'a limited edition product' for 'a shopper', its tags joined
    as a category path (reliability issue, 7). The config's ``domain`` sets the words and the category style; the
    default keeps the shop prompts word for word (their cache keys too)."""
    from pipelines.config import load_config

    artist = {"title": "Nick Drake", "categories": ["folk", "singer-songwriter", "acoustic"], "price": None}
    shop = T.item_messages(artist)
    assert shop[0]["content"] == ("You write short, factual product descriptions for an online shop. Use only the "
                                  "facts given. Do not invent ingredients, sizes or prices.")
    assert "Category: folk > singer-songwriter > acoustic" in shop[1]["content"]
    cfg = load_config(None, ["domain.item=artist", "domain.items=artists", "domain.user=listener",
                             "domain.catalogue=a music service", "domain.history=plays",
                             "domain.audience=who would enjoy it", "domain.user_traits=taste in music",
                             "domain.inventions=albums or dates", "domain.categories=tags"])
    d = cfg.domain
    item, user = T.item_messages(artist, d=d), T.user_messages([artist], d=d)
    text = " ".join(m["content"] for m in item + user)
    assert "Category: folk, singer-songwriter, acoustic" in item[1]["content"]
    assert "describe this artist and who would enjoy it" in text and "this listener's taste in music" in text
    assert "Plays, newest first:\n- Nick Drake (folk)" in user[1]["content"]           # a tag list's first tag
    assert not [w for w in ("product", "shopper", "purchase", " > ") if w in text]
    assert "listener" in T.rationale_messages([artist], d=d)[1]["content"]
    assert T.content_hash(T.item_messages(artist)) != T.content_hash(item)             # other words, other key
