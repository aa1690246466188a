"""The embedded demo dataset: online-shop customer questions, paired for FAQ matching.

This is a DEMO, not a benchmark. It lets ``flipkd`` run end to end on a fresh machine without downloading
anything, and it is small enough for CPU. Its numbers say nothing about how the method does on real data.

The task is the one a customer-service FAQ meets every day: the shop's questions (36 intents, e.g.
``cancel_order``) are fixed, and customers keep asking them in new words. Is this new message the same
question as that one? Every text is generated here, deterministically, from hand-written templates: each
intent has eight phrasing templates with a few slot fillers ({order}, {item}, {card}, {plan}). Intents come in
12 families of three that a customer-service model easily confuses (cancel an order / a subscription / a
return; reset a password / change the e-mail / unlock the account; ...).

Splits are by phrasing: per intent, four templates give the training texts, two others the dev texts and the
last two the test texts. So dev and test ask the known questions in wordings never seen in training, and no
text is on two sides of a split. Pairs, all inside one split and one family:

- ``positive`` (label 1): two phrasings of the same intent from two different templates;
- ``hard_negative`` (label 0): texts of two intents of the family chosen for the largest word overlap,
  e.g. "How do I cancel my order?" vs "How do I cancel my subscription?";
- ``random_negative`` (label 0): random texts of two intents of the family.

Besides the canonical columns (see :mod:`components.data.contract`) the frame has ``split``, ``group`` (the family),
``intent_a``, ``intent_b`` and ``kind``.

One concept, the demo data set, in more than 500 lines: about 390 of them are the phrasing templates
(:data:`FAMILIES`), data rather than code; the generator that pairs them is the last 140.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.contract import pair_id
from components.data.writing import write_pairs

SOURCE = "flipkd-demo"
SPLITS = ("train", "dev", "test")
TEMPLATES_PER_SPLIT = {"train": 4, "dev": 2, "test": 2}  # of each intent's eight
# per split: positives per intent, hard and random negatives per family (about half the pairs positive)
PAIRS_PER_SPLIT = {"train": (5, 8, 7), "dev": (2, 3, 3), "test": (2, 3, 3)}

SLOTS: dict[str, list[str]] = {
    "order": ["order", "purchase"],
    "item": ["jacket", "blender", "backpack", "phone case", "desk lamp"],
    "card": ["debit card", "credit card", "store card"],
    "plan": ["subscription", "Plus membership", "monthly plan"],
}

# family -> intent -> paraphrase templates. Families group intents a model easily confuses.
FAMILIES: dict[str, dict[str, list[str]]] = {
    "cancellations": {
        "cancel_order": [
            "How do I cancel my {order}?",
            "I want to cancel the {order} I placed this morning.",
            "Can I still cancel my {order} if it hasn't shipped yet?",
            "Please cancel my last {order}, I picked the wrong {item}.",
            "Is it possible to stop my {order} before it is sent?",
            "I changed my mind about the {item}, can you cancel the {order}?",
            "I ordered a {item} by mistake, please call the {order} off.",
            "Stop my {order} please, I don't want it any more.",
        ],
        "cancel_subscription": [
            "How do I cancel my {plan}?",
            "I want to cancel the {plan} I signed up for last month.",
            "Can I still cancel my {plan} before the next renewal?",
            "Please stop my {plan} from renewing automatically.",
            "Is it possible to end my {plan} and stop the monthly payments?",
            "I no longer need the {plan}, how do I turn it off?",
            "Please end my {plan}, I don't want to be billed again.",
            "How can I quit the {plan} so it doesn't renew?",
        ],
        "cancel_return": [
            "How do I cancel my return?",
            "I want to cancel the return I started for the {item}.",
            "Can I still cancel a return request after printing the label?",
            "Please cancel my return, I decided to keep the {item}.",
            "I opened a return by mistake, how do I withdraw it?",
            "Is it possible to undo a return I already requested?",
            "I'd like to keep the {item} after all, please call off my return.",
            "Stop the return I requested, I'm not sending the {item} back.",
        ],
    },
    "tracking": {
        "track_order": [
            "Where is my {order}?",
            "How can I track my {order}?",
            "My {item} hasn't arrived yet, where is it?",
            "Can you tell me the delivery status of my {order}?",
            "I need the tracking number for my {order}.",
            "When will my {item} be delivered?",
            "Any news on when my {order} will get here?",
            "I'd like an update on the shipping of my {item}.",
        ],
        "track_refund": [
            "Where is my refund?",
            "How can I track my refund?",
            "I returned the {item} two weeks ago and still have no refund.",
            "Can you tell me the status of my refund?",
            "When will the money for my returned {order} be back on my {card}?",
            "My refund hasn't arrived yet, how long does it take?",
            "When will I get my money back for the {item}?",
            "I returned the {item} weeks ago and still have no refund.",
        ],
        "track_return": [
            "Has my return arrived at your warehouse?",
            "How can I track the return parcel I sent back?",
            "I sent the {item} back last week, did you receive it?",
            "Can you tell me the status of the package I returned?",
            "I need the tracking number for my return shipment.",
            "How do I know if you got my returned {item}?",
            "Did you receive the {item} I sent back?",
            "I shipped my return last week, has it reached you?",
        ],
    },
    "login": {
        "reset_password": [
            "I forgot my password, how do I reset it?",
            "How can I reset the password for my account?",
            "The password reset email never arrived.",
            "I can't remember my login password.",
            "Please help me set a new password for my account.",
            "How do I change my account password?",
            "Send me a link to set a new password, please.",
            "My password isn't accepted and I don't remember the right one.",
        ],
        "change_email": [
            "How do I change the email address on my account?",
            "I want to update the email I use to log in.",
            "Can I move my account to a new email address?",
            "My old email no longer works, how do I replace it on my account?",
            "Please help me set a new email address for my account.",
            "Where can I edit the email linked to my account?",
            "I'd like my account to use a different email address.",
            "Please switch the email on my profile to my new one.",
        ],
        "unlock_account": [
            "My account is locked after too many login attempts.",
            "How do I unlock my account?",
            "I entered the wrong password several times and now I'm blocked.",
            "Can you unblock my account so I can log in again?",
            "It says my account is temporarily locked, what do I do?",
            "Please help me get back into my locked account.",
            "I typed the wrong password too often and now I'm blocked out.",
            "The site says my account is temporarily locked, what now?",
        ],
    },
    "cards": {
        "reset_pin": [
            "I forgot my card PIN, how do I reset it?",
            "How can I reset the PIN of my {card}?",
            "Can I change the PIN on my {card}?",
            "I can't remember the PIN for my {card}.",
            "Please help me set a new PIN for my card.",
            "Where do I choose a new PIN for my {card}?",
            "I need a new PIN for my {card}, I forgot the old one.",
            "Which steps do I follow to set a fresh PIN on my {card}?",
        ],
        "card_lost": [
            "I lost my {card}, how do I block it?",
            "My {card} was stolen, please freeze it.",
            "How can I block my card right away?",
            "I can't find my {card} anywhere, what should I do?",
            "Please cancel my card, I think someone took it.",
            "Can I freeze my {card} until I find it?",
            "My wallet was stolen with my {card} inside, please freeze it.",
            "Please block my {card}, it's gone missing.",
        ],
        "card_declined": [
            "Why was my {card} declined at checkout?",
            "My card payment keeps getting rejected.",
            "The payment with my {card} failed, what's wrong?",
            "I get an error saying my card was declined.",
            "Why won't your site accept my {card}?",
            "My card works elsewhere but is refused when I pay here.",
            "The payment with my {card} keeps failing, why?",
            "My {card} was rejected when I tried to pay.",
        ],
    },
    "addresses": {
        "change_delivery_address": [
            "How do I change the delivery address for my {order}?",
            "I entered the wrong shipping address, can you fix it?",
            "Can I send my {order} to a different address?",
            "I moved, please deliver the {item} to my new address.",
            "Is it too late to update the shipping address on my {order}?",
            "Please change where my {order} will be delivered.",
            "Please send my {order} to another address than the one I gave.",
            "I entered the wrong street for my {order}, can I fix it?",
        ],
        "change_billing_address": [
            "How do I change the billing address on my account?",
            "I need to update the billing address for my card payments.",
            "Can I use a billing address that differs from my delivery address?",
            "I moved, please update the address on my invoices.",
            "Where do I edit the billing address linked to my {card}?",
            "My invoice shows my old billing address, how do I change it?",
            "My invoices show my old address, how do I update it?",
            "I need to correct the address used for billing.",
        ],
        "pickup_point": [
            "Can I have my {order} delivered to a pickup point?",
            "How do I choose a parcel locker instead of home delivery?",
            "Is it possible to collect my {item} from a store?",
            "I'm not home during the day, can I pick up the {order} somewhere?",
            "Do you offer click and collect?",
            "Can I change the delivery of my {order} to a collection point?",
            "Is there a collection point where I can get my {order}?",
            "Can I collect the {item} at a parcel locker instead?",
        ],
    },
    "returns": {
        "return_item": [
            "How do I return the {item}?",
            "What is your return policy?",
            "I want to send the {item} back for a refund.",
            "How many days do I have to return my {order}?",
            "Can I return something I bought online?",
            "I don't like the {item}, how can I return it?",
            "I don't want the {item}, how do I send it back?",
            "What is your process for sending back my {order}?",
        ],
        "exchange_item": [
            "How do I exchange the {item} for a different size?",
            "Can I swap the {item} for another colour?",
            "I want to exchange my {order} instead of getting a refund.",
            "The {item} is too small, can I get a bigger one?",
            "Is it possible to exchange something I bought online?",
            "I don't like the colour of the {item}, can I exchange it?",
            "Could I trade the {item} in for the same one in a bigger size?",
            "I'd like a different model of the {item} instead of this one.",
        ],
        "damaged_item": [
            "The {item} arrived broken.",
            "My {order} was damaged during delivery, what can I do?",
            "The {item} I received doesn't work.",
            "The box was crushed and the {item} inside is damaged.",
            "I received a faulty {item}, can you replace it?",
            "What should I do if my {item} arrives scratched?",
            "My {item} came with a crack in it.",
            "The {item} I received doesn't work, it looks damaged in transit.",
        ],
    },
    "payment": {
        "payment_methods": [
            "Which payment methods do you accept?",
            "Can I pay with PayPal?",
            "Do you take Apple Pay or only cards?",
            "What are the ways to pay for my {order}?",
            "Is bank transfer accepted as payment?",
            "Can I pay for my {order} with a {card}?",
            "Can I pay with PayPal or only by card?",
            "Do you take bank transfers for my {order}?",
        ],
        "pay_in_instalments": [
            "Can I pay for my {order} in instalments?",
            "Do you offer buy now, pay later?",
            "Is it possible to split the payment for the {item} into monthly payments?",
            "How do I pay in several instalments?",
            "Can I spread the cost of my {order} over three months?",
            "Do you offer financing for bigger purchases like the {item}?",
            "Can I spread the cost of the {item} over a few months?",
            "Is there a payment plan for my {order}?",
        ],
        "gift_card": [
            "How do I use a gift card to pay for my {order}?",
            "Where do I enter my gift card code?",
            "Can I pay with a gift card and a {card} together?",
            "How do I check my gift card balance?",
            "My gift card doesn't cover the full price, what happens?",
            "Can I redeem a gift card online?",
            "I got a voucher card as a present, how do I spend it on my {order}?",
            "Where do I type the gift card number at checkout?",
        ],
    },
    "discounts": {
        "apply_promo_code": [
            "Where do I enter a discount code?",
            "How do I apply a promo code to my {order}?",
            "I have a voucher code, where does it go at checkout?",
            "Can I use a coupon on my {order}?",
            "How do I add a discount code before paying?",
            "Where is the box for promo codes?",
            "I have a promo code, where does it go at checkout?",
            "How do I redeem a voucher code on my {order}?",
        ],
        "promo_code_invalid": [
            "My discount code doesn't work.",
            "The promo code says it is invalid.",
            "Why was my voucher code rejected at checkout?",
            "I entered a coupon but the price didn't change.",
            "The discount code was not applied to my {order}.",
            "It says my promo code has expired, but it shouldn't have.",
            "The site says my promo code is not valid.",
            "I typed the voucher code and it was rejected.",
        ],
        "price_adjustment": [
            "The {item} went on sale right after I bought it, can I get the difference back?",
            "The price dropped a day after my {order}, can you refund the difference?",
            "Do you offer price protection if the price goes down?",
            "I paid full price for the {item} and now it's discounted.",
            "Can I get a partial refund because the price was lowered?",
            "Can you match the new lower price of the {item} I just bought?",
            "The {item} is cheaper now than when I ordered it, can you refund the gap?",
            "Do you match a price drop after I've paid for my {item}?",
        ],
    },
    "shipping": {
        "delivery_time": [
            "How long does delivery take?",
            "When will I get my {order} if I order today?",
            "How many days does standard shipping take?",
            "Can I get the {item} by Friday?",
            "What is the delivery time for my {order}?",
            "Do you offer next-day delivery?",
            "When will my {item} arrive if I order today?",
            "How many days until my {order} is delivered?",
        ],
        "delivery_cost": [
            "How much does delivery cost?",
            "Is shipping free?",
            "What is the shipping fee for my {order}?",
            "Why am I paying for delivery on the {item}?",
            "How much do I need to spend for free shipping?",
            "How much is next-day delivery?",
            "Is shipping free for my {order}?",
            "What do you charge to send the {item}?",
        ],
        "international_shipping": [
            "Do you ship to other countries?",
            "Can I order the {item} from abroad?",
            "Do you deliver internationally?",
            "Which countries do you deliver to?",
            "Will I pay customs fees on an international {order}?",
            "Can you send my {order} to Canada?",
            "Can you send my {order} abroad?",
            "Do you deliver outside the country?",
        ],
    },
    "privacy": {
        "delete_account": [
            "How do I delete my account?",
            "I want to close my account permanently.",
            "Please remove my account and all my data.",
            "Can I delete my profile from your shop?",
            "How can I deactivate my customer account?",
            "I no longer want an account with you, please delete it.",
            "Please close my account and remove it for good.",
            "I want my customer account erased completely.",
        ],
        "unsubscribe_emails": [
            "How do I stop receiving your emails?",
            "I want to unsubscribe from the newsletter.",
            "Please remove me from your mailing list.",
            "Can I turn off marketing emails?",
            "How can I stop the promotional messages you send me?",
            "I get too many emails from you, how do I opt out?",
            "Please take me off your mailing list.",
            "I get too many newsletters from you, how do I stop them?",
        ],
        "download_data": [
            "How can I download all the data you have about me?",
            "I want a copy of my personal data.",
            "Can I export my account data?",
            "Please send me all the information stored in my account.",
            "How do I request my data under GDPR?",
            "Where can I see what personal data you keep?",
            "I'd like a copy of the personal data you store about me.",
            "How do I export everything my account holds about me?",
        ],
    },
    "charges": {
        "get_invoice": [
            "Where can I find the invoice for my {order}?",
            "How do I download a receipt for my {order}?",
            "I need a VAT invoice for the {item}.",
            "Can you send me a copy of my invoice?",
            "How do I get a receipt for my {order}?",
            "Can I get an invoice with my company name on it?",
            "I need a receipt for my {order} for my expenses.",
            "Where do I download the bill for the {item}?",
        ],
        "charged_twice": [
            "I was charged twice for my {order}.",
            "Why do I see two payments for one {order}?",
            "My card was billed twice for the same {item}.",
            "You took the money twice, please refund one payment.",
            "There's a duplicate charge on my card for my {order}.",
            "I paid once but was charged two times.",
            "My {card} shows two payments for one {order}.",
            "I was billed double for the {item}.",
        ],
        "unknown_charge": [
            "I don't recognise a charge from your shop on my card.",
            "There is a payment to you on my statement that I didn't make.",
            "What is this charge on my {card}?",
            "Someone used my card to buy from your store.",
            "I see a charge I didn't authorise, what is it?",
            "Why is there a payment to your company on my bank statement?",
            "There's a payment to your shop on my {card} that I didn't make.",
            "I see a charge from you that I know nothing about.",
        ],
    },
    "delivery_problems": {
        "missing_item": [
            "An item is missing from my {order}.",
            "The {item} was not in the package.",
            "I only received part of my {order}.",
            "My parcel arrived but one of the items is missing.",
            "The box came without the {item} I paid for.",
            "Half of my {order} is missing, what should I do?",
            "The {item} wasn't in the box with the rest of my {order}.",
            "Part of my {order} never came, the {item} is not there.",
        ],
        "wrong_item": [
            "I received the wrong item in my {order}.",
            "You sent me a different {item} than the one I ordered.",
            "The package contains something I didn't order.",
            "I ordered a {item} but got something else.",
            "The item in my {order} is not what I bought.",
            "The wrong size and colour arrived, this isn't the {item} I chose.",
            "You sent me a different product than the {item} I ordered.",
            "The box had someone else's {order} in it.",
        ],
        "not_received": [
            "My {order} says delivered but I never got it.",
            "The tracking shows delivered, but there's no package.",
            "I didn't receive my {order} even though it's marked as delivered.",
            "The courier says the {item} was delivered, but it isn't here.",
            "My parcel is marked delivered but I can't find it.",
            "I never received my {order}.",
            "Tracking shows my {order} was dropped off but nothing arrived.",
            "The {item} is marked as delivered but I don't have it.",
        ],
    },
}


def demo_pairs(seed: int = 0) -> pd.DataFrame:
    """The demo pairs as a canonical frame plus ``split``, ``group`` (family), ``intent_a``, ``intent_b``, ``kind``.

    Deterministic for a given ``seed``; about 650 pairs (train 360, dev and test 144 each), half positive.
    """
    rng = np.random.default_rng(seed)
    records: list[dict[str, object]] = []
    for family, intents in FAMILIES.items():
        pools = {split: {} for split in SPLITS}
        for intent, templates in intents.items():
            order, start = [int(k) for k in rng.permutation(len(templates))], 0
            for split in SPLITS:
                chosen = set(order[start:start + TEMPLATES_PER_SPLIT[split]])
                start += TEMPLATES_PER_SPLIT[split]
                pools[split][intent] = [(text, k) for text, k in _expand(templates) if k in chosen]
        for split in SPLITS:
            positives, hard, random = PAIRS_PER_SPLIT[split]
            used: set[frozenset[str]] = set()
            family_records = _positives(pools[split], rng, used, positives) + _hard_negatives(pools[split], rng,
                                                                                              used, hard)
            family_records += _random_negatives(pools[split], rng, used, random)
            records += [dict(record, group=family, split=split) for record in family_records]
    for record in records:  # both orders occur, so no side of the pair carries a hint
        if rng.random() < 0.5:
            record["text_a"], record["text_b"] = record["text_b"], record["text_a"]
            record["intent_a"], record["intent_b"] = record["intent_b"], record["intent_a"]
    order = rng.permutation(len(records))
    frame = pd.DataFrame([records[k] for k in order])
    frame["label"] = frame["label"].astype(np.float64)
    frame["match"] = frame["label"].astype(np.int64)
    frame["pair_id"] = [pair_id(a, b) for a, b in zip(frame["text_a"], frame["text_b"], strict=True)]
    columns = ["text_a", "text_b", "label", "match", "pair_id", "split", "group", "intent_a", "intent_b", "kind"]
    frame = frame[columns]
    frame.attrs["source"] = SOURCE
    frame.attrs["graded"] = False
    return frame


def write_demo(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl``: the same intents, other phrasings per split."""
    folder = Path(folder)
    frame = demo_pairs(seed)
    paths = {}
    for split in SPLITS:
        paths[split] = folder / f"{split}.jsonl"
        write_pairs(frame[frame["split"] == split].reset_index(drop=True), paths[split])
    return paths


def _expand(templates: list[str]) -> list[tuple[str, int]]:
    """Every slot filling of every template, as (text, template index), in a fixed order."""
    texts: list[tuple[str, int]] = []
    for index, template in enumerate(templates):
        names = sorted(set(re.findall(r"{(\w+)}", template)))
        for values in itertools.product(*(SLOTS[name] for name in names)):
            texts.append((template.format(**dict(zip(names, values, strict=True))), index))
    return texts


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _overlap(a: str, b: str) -> float:
    """Jaccard overlap of the word sets: what makes a negative 'hard' for a lexical matcher."""
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb)


def _record(a: str, b: str, intent_a: str, intent_b: str, label: int, kind: str) -> dict[str, object]:
    return {"text_a": a, "text_b": b, "label": label, "intent_a": intent_a, "intent_b": intent_b, "kind": kind}


def _claim(used: set[frozenset[str]], a: str, b: str) -> bool:
    """Reserve the unordered pair; False when it was already taken (no duplicate or mirrored pairs)."""
    key = frozenset((a, b))
    if key in used:
        return False
    used.add(key)
    return True


def _positives(pools: dict[str, list[tuple[str, int]]], rng: np.random.Generator,
               used: set[frozenset[str]], per_intent: int) -> list[dict[str, object]]:
    """Per intent, texts from two different templates: a paraphrase, not a slot swap."""
    records = []
    for intent, pool in pools.items():
        by_template: dict[int, list[str]] = {}
        for text, index in pool:
            by_template.setdefault(index, []).append(text)
        template_pairs = list(itertools.combinations(sorted(by_template), 2))
        found = 0
        for attempt in range(8 * per_intent):  # cycle through the template pairs; slot-less ones run out
            if found == per_intent:
                break
            t1, t2 = template_pairs[(attempt + int(rng.integers(len(template_pairs)))) % len(template_pairs)]
            a = by_template[t1][int(rng.integers(len(by_template[t1])))]
            b = by_template[t2][int(rng.integers(len(by_template[t2])))]
            if _claim(used, a, b):
                records.append(_record(a, b, intent, intent, 1, "positive"))
                found += 1
    return records


def _hard_negatives(pools: dict[str, list[tuple[str, int]]], rng: np.random.Generator,
                    used: set[frozenset[str]], count: int) -> list[dict[str, object]]:
    """The cross-intent pairs with the largest word overlap; a text at most twice, a template pair once, for variety."""
    candidates = []
    for (intent_a, pool_a), (intent_b, pool_b) in itertools.combinations(pools.items(), 2):
        for (a, ta), (b, tb) in itertools.product(pool_a, pool_b):
            candidates.append((_overlap(a, b), rng.random(), a, b, intent_a, intent_b, (intent_a, ta, intent_b, tb)))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    records: list[dict[str, object]] = []
    uses: dict[str, int] = {}
    seen_templates: set[tuple[str, int, str, int]] = set()
    for _, _, a, b, intent_a, intent_b, templates in candidates:
        if len(records) == count:
            break
        if uses.get(a, 0) >= 2 or uses.get(b, 0) >= 2 or templates in seen_templates or not _claim(used, a, b):
            continue
        uses[a], uses[b] = uses.get(a, 0) + 1, uses.get(b, 0) + 1
        seen_templates.add(templates)
        records.append(_record(a, b, intent_a, intent_b, 0, "hard_negative"))
    return records


def _random_negatives(pools: dict[str, list[tuple[str, int]]], rng: np.random.Generator,
                      used: set[frozenset[str]], count: int) -> list[dict[str, object]]:
    """Random texts of two different intents of the family."""
    intents = list(pools)
    records: list[dict[str, object]] = []
    while len(records) < count:
        i, j = rng.choice(len(intents), size=2, replace=False)
        pool_a, pool_b = pools[intents[i]], pools[intents[j]]
        a = pool_a[int(rng.integers(len(pool_a)))][0]
        b = pool_b[int(rng.integers(len(pool_b)))][0]
        if _claim(used, a, b):
            records.append(_record(a, b, intents[i], intents[j], 0, "random_negative"))
    return records
