"""The built-in task ``contracts``: a contract sentence in, a fixed JSON record out.

Each example is one sentence from a (made-up) contract, for instance::

    On 3 March 2025, Harbor Lane Ltd (the "Landlord") leased the premises to Maya Okafor
    (the "Tenant") for 2 years at EUR 1,450 per month.

and the answer is one line of JSON with seven keys, always in this order::

    {"type": "lease", "payer": "Maya Okafor", "payee": "Harbor Lane Ltd", "amount": 1450,
     "currency": "EUR", "date": "2025-03-03", "months": 24}

It is a real test rather than copying: dates must be normalised to ISO (``3rd of March 2025``,
``March 3, 2025``), amounts to integers (``€1,450``, ``1,450 euros``), currencies to ISO codes,
terms in years to months, and ``payer``/``payee`` depend on the roles (the tenant pays the
landlord, the employer pays the employee), not on the order in which the parties are named.

The held-out test set is built from sentence templates **and** entities (first names, surnames,
company words) that the training set never uses, so a model cannot pass it by memorising.
Everything is generated from a seed: the same seed gives the same examples, byte for byte.

The public pieces (what :mod:`lora101.tasks` asks of a task, and a few more):

* :func:`make_examples` - ``n`` examples of one split as dicts (``sentence``, ``record``, ...);
* :func:`build_messages` - the chat a model sees (system, user) and the answer (assistant);
* :func:`build_dataset` - a ``datasets.DatasetDict`` with ``train`` and ``test`` splits;
* :func:`score` - exact match of the parsed record and accuracy per field (:func:`lora101.evaluate.score`);
* :func:`entity_words`, :func:`templates` - what each split draws from (the splits share none).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from lora101 import evaluate
from lora101.data import tokenize_example

DESCRIPTION = (
    "a contract sentence in, one line of JSON out (type, payer, payee, amount, currency, date, months)"
)
FIELDS: tuple[str, ...] = ("type", "payer", "payee", "amount", "currency", "date", "months")
SYSTEM_PROMPT = "Extract the contract as JSON."
SPLITS: tuple[str, ...] = ("train", "test")
score = evaluate.score  # the task's scorer: the record parsed as JSON, exact match and accuracy per field

# ------------------------------------------------------------------------------------------------
# Entities: disjoint word lists for the two splits (a test name never appears in training).

# The training lists are long on purpose: with a few dozen names a model learns those names, and
# on an unseen one it writes a training name or a near copy ("Gazia" for "Grazia", measured); with
# hundreds from many languages it has to learn to copy whatever name the sentence holds.
_FIRST = {
    "train": [
        "Maya",
        "Liam",
        "Sofia",
        "Noah",
        "Elena",
        "Lucas",
        "Amira",
        "Jonas",
        "Chloe",
        "Mateo",
        "Ines",
        "Oskar",
        "Priya",
        "Diego",
        "Hanna",
        "Tariq",
        "Lena",
        "Ruben",
        "Aisha",
        "Felix",
        "Nora",
        "Marco",
        "Yara",
        "Emil",
        "Zoe",
        "Victor",
        "Leila",
        "Hugo",
        "Maren",
        "Kofi",
        "Adaeze",
        "Agnieszka",
        "Aleksander",
        "Alejandro",
        "Anastasia",
        "Annika",
        "Arjun",
        "Astrid",
        "Aurelio",
        "Babajide",
        "Bogdan",
        "Caoimhe",
        "Catalina",
        "Chidi",
        "Cornelius",
        "Dagny",
        "Desmond",
        "Dorota",
        "Eero",
        "Efua",
        "Eleonora",
        "Evangeline",
        "Fatima",
        "Florentyna",
        "Friedrich",
        "Gaspard",
        "Genevieve",
        "Gunnhild",
        "Hamish",
        "Hiroko",
        "Ignatius",
        "Isolde",
        "Jadwiga",
        "Jaroslav",
        "Kazimierz",
        "Keziah",
        "Kwabena",
        "Leopold",
        "Ludmila",
        "Magnus",
        "Makoto",
        "Marisol",
        "Maximilian",
        "Nadezhda",
        "Niamh",
        "Nkechi",
        "Octavia",
        "Oluwaseun",
        "Pieter",
        "Radoslaw",
        "Rosalind",
        "Seamus",
        "Siobhan",
        "Svetlana",
        "Thaddeus",
        "Theodora",
        "Ulrich",
        "Valentina",
        "Wojciech",
        "Xiomara",
        "Yevgeny",
        "Yusuf",
        "Zbigniew",
        "Zuzanna",
        "Aurelia",
        "Benedikt",
        "Casimir",
        "Dagmar",
        "Eamon",
        "Fionnuala",
        "Gwendolyn",
        "Horatio",
        "Imogen",
        "Jacinta",
        "Kjersti",
        "Lucinda",
        "Nikolai",
        "Ophelia",
        "Perpetua",
        "Quentin",
        "Roisin",
        "Sigrid",
        "Tobias",
        "Ulrika",
        "Vasilisa",
        "Yolanda",
        "Zenobia",
        "Mei",
        "Ravi",
        "Sun-hee",
        "Jean-Luc",
        "Anne-Marie",
        "Chiamaka",
        "Dafydd",
        "Esperanza",
        "Guillermo",
        "Hyacinth",
    ],
    "test": [
        "Beatrix",
        "Dmitri",
        "Olufemi",
        "Saoirse",
        "Takeshi",
        "Grazia",
        "Anselm",
        "Wilhelmina",
        "Rashid",
        "Ottilie",
        "Bartholomew",
        "Ingrid",
    ],
}
_LAST = {
    "train": [
        "Okafor",
        "Lindqvist",
        "Moreau",
        "Tanaka",
        "Novak",
        "Silva",
        "Brennan",
        "Keller",
        "Haddad",
        "Rossi",
        "Kowalski",
        "Nguyen",
        "Fischer",
        "Alvarez",
        "Petrov",
        "Mensah",
        "Larsen",
        "Duarte",
        "Schmidt",
        "Kaur",
        "OConnell",
        "Varga",
        "Costa",
        "Weber",
        "Adeyemi",
        "Holm",
        "Marin",
        "Berg",
        "Abramowicz",
        "Achterberg",
        "Agyemang",
        "Albrechtsen",
        "Andriessen",
        "Arkwright",
        "Ashworth",
        "Bjornstad",
        "Blackwood",
        "Bondarenko",
        "Brzezinski",
        "Chakraborty",
        "Christodoulou",
        "Cunningham",
        "Dabrowski",
        "Delacroix",
        "Dimitriou",
        "Ekwueme",
        "Esposito",
        "Fairweather",
        "Fitzgerald",
        "Gallagher",
        "Garcia-Molina",
        "Gonzaga",
        "Grabowski",
        "Hakobyan",
        "Hallworth",
        "Hashimoto",
        "Hernandez-Ruiz",
        "Hollingsworth",
        "Jankowski",
        "Jovanovic",
        "Kaczmarek",
        "Karlsson",
        "Kobayashi",
        "Kuznetsova",
        "Lachapelle",
        "Lindgren",
        "Lopez-Vidal",
        "MacPherson",
        "Makarova",
        "Mwangi",
        "Nakamura",
        "Nwachukwu",
        "Obradovic",
        "Oduya",
        "Pacheco",
        "Papadopoulos",
        "Przybylski",
        "Quartermaine",
        "Radcliffe",
        "Rasmussen",
        "Rutherford",
        "Sakamoto",
        "Salazar-Ortiz",
        "Schwarzenbach",
        "Sokolowski",
        "Stavropoulos",
        "Sutherland",
        "Takahashi",
        "Trzcinski",
        "Uchenna",
        "Underwood",
        "Valdivia",
        "Vasquez",
        "Wainwright",
        "Wasilewski",
        "Whittaker",
        "Wojcik",
        "Yamamoto",
        "Yilmaz",
        "Zielinski",
        "Zimmermann",
        "Ambrose-Clarke",
        "Delgado",
        "Eriksen",
        "Fontaine",
        "Gustafsson",
        "Halvorsen",
        "Iyer",
        "Jablonski",
        "Krishnamurthy",
        "Lowenstein",
        "Mortensen",
        "Nieminen",
        "Ostrowski",
        "Pellegrini",
        "Quintero",
        "Rosenthal",
        "Tremblay",
        "Ulyanov",
        "Wexford",
        "Xu",
        "Yoshida",
        "Zamora",
        "Van der Berg",
    ],
    "test": [
        "Vanterpool",
        "Quisenberry",
        "Abernathy",
        "Szczepanski",
        "Montgomery",
        "Ferreira-Lunde",
        "Castellanos",
        "Oyelaran",
        "Whitcombe",
        "Dragomir",
        "Iwasaki",
        "Thorvaldsen",
    ],
}
_COMPANY_WORD = {
    "train": [
        "Harbor Lane",
        "Bluepeak",
        "Northwind",
        "Silverline",
        "Redwood",
        "Cobalt",
        "Summit Ridge",
        "Brightwater",
        "Ironbridge",
        "Maple Court",
        "Greenfield",
        "Stonegate",
        "Oakmont",
        "Westbury",
        "Clearview",
        "Falcon",
        "Riverside",
        "Granite",
        "Sunrise",
        "Pinecrest",
        "Lakeshore",
        "Orchid",
        "Amberly",
        "Ashgrove",
        "Beacon Hill",
        "Birchwood",
        "Blackthorn",
        "Cedar Point",
        "Cloudberry",
        "Crescent Bay",
        "Driftwood",
        "Eastgate",
        "Elmstead",
        "Fernhill",
        "Foxglove",
        "Frostline",
        "Goldcrest",
        "Hawthorn",
        "Heron Bay",
        "Hollybrook",
        "Kestrel",
        "Kingsbridge",
        "Larkspur",
        "Lighthouse",
        "Meadowlark",
        "Millbrook",
        "Moonstone",
        "Nettlefield",
        "Northgate",
        "Oldcastle",
        "Pebblestone",
        "Quarry Hill",
        "Ravenscroft",
        "Rosemoor",
        "Sandpiper",
        "Seabright",
        "Shadowbrook",
        "Starling",
        "Tidewater",
        "Timberline",
        "Violet Ridge",
        "Waterford",
        "Whistlewood",
        "Willowmere",
        "Windmill Lane",
        "Yarrow",
        "Zenith",
        "Blue Heron",
        "Red Kite",
    ],
    "test": [
        "Quillfeather",
        "Zephyrine",
        "Obsidian Vale",
        "Marigold Kettle",
        "Thistledown",
        "Saffron Wharf",
        "Copperbeech",
        "Wrenfield Moor",
        "Halcyon Forge",
        "Juniper Spire",
    ],
}
_COMPANY_SUFFIX = {
    # Both splits mix suffixes with inner full stops and lower-case letters: a model that only ever saw
    # "Inc." learns that a full stop ends a name and cuts the unseen "S.A." to "S." (measured).
    "train": [
        "Ltd",
        "LLC",
        "Inc.",
        "GmbH",
        "Partners",
        "Holdings",
        "Group",
        "S.p.A.",
        "N.V.",
        "Pty. Ltd.",
        "e.V.",
        "& Co.",
        "Oy",
        "s.r.o.",
        "ehf.",
        "KG",
        "Corp.",
        "Associates",
        "Trust",
        "Ventures",
        "S.r.l.",
        "A/S",
        "AB",
        "Ltda.",
        "K.K.",
        "Sp. z o.o.",
        "Limited",
        "SE",
        "LLP",
        "Sdn. Bhd.",
        "kft.",
        "a.s.",
        "GbR",
        "S.L.",
        "Mutual",
        "Foundation",
        "Syndicate",
        "ltd",
        "oyj",
    ],
    "test": ["S.A.", "plc", "AG", "Cooperative", "B.V."],
}

# ------------------------------------------------------------------------------------------------
# Contract types: the JSON "type", and the role nouns of whoever pays and whoever is paid.


@dataclass(frozen=True)
class ContractType:
    """A kind of contract: its JSON ``type``, the payer's and payee's role nouns, and what is paid for."""

    name: str
    payer_role: str
    payee_role: str
    noun: str  # the agreement's name in a sentence
    verb: str  # "<payee> agrees to <verb> <payer>" reads naturally
    per: str  # how the amount recurs ("per month") or "" for a one-off price


CONTRACT_TYPES: tuple[ContractType, ...] = (
    ContractType("lease", "Tenant", "Landlord", "Lease Agreement", "let the premises to", "per month"),
    ContractType("services", "Client", "Provider", "Services Agreement", "provide services to", "per month"),
    ContractType("sale", "Buyer", "Seller", "Sale Agreement", "deliver the goods to", ""),
    ContractType(
        "licence", "Licensee", "Licensor", "Licence Agreement", "license the software to", "per year"
    ),
    ContractType("employment", "Employer", "Employee", "Employment Agreement", "work for", "per year"),
)

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# Currency renderings: (ISO code, ways a contract writes an amount in it). {a} is "12,500".
_CURRENCIES: dict[str, tuple[str, ...]] = {
    "USD": ("USD {a}", "${a}", "{a} US dollars"),
    "EUR": ("EUR {a}", "€{a}", "{a} euros"),
    "GBP": ("GBP {a}", "£{a}", "{a} pounds sterling"),
    "CHF": ("CHF {a}", "{a} Swiss francs"),
}

# ------------------------------------------------------------------------------------------------
# Sentence templates. Slots: {date} {payer} {payee} {payer_role} {payee_role} {noun} {verb}
# {money} {per} {term}. The two lists share no template (checked by a test).

_TEMPLATES = {
    "train": [
        'This {noun} is made on {date} between {payee} (the "{payee_role}") and {payer} (the "{payer_role}"); '
        "the {payer_role} shall pay {money}{per} for {term}.",
        'On {date}, {payee} (the "{payee_role}") agreed to {verb} {payer} (the "{payer_role}") for {term} '
        "at {money}{per}.",
        "{payer}, as {payer_role}, will pay {payee}, as {payee_role}, {money}{per} under a {noun} dated {date} "
        "lasting {term}.",
        "Under the {noun} signed {date}, the {payee_role} {payee} receives {money}{per} from the "
        "{payer_role} {payer} for {term}.",
        "{noun} dated {date}: {payer_role}: {payer}. {payee_role}: {payee}. Consideration: {money}{per}. "
        "Term: {term}.",
        "The {payer_role}, {payer}, and the {payee_role}, {payee}, entered into a {noun} on {date} for {term}; "
        "the fee is {money}{per}.",
        "With effect from {date}, {payee} shall {verb} {payer} for {term}, and {payer} shall pay {money}{per} "
        "(the {payee_role} being {payee} and the {payer_role} being {payer}).",
        "{payee} ({payee_role}) and {payer} ({payer_role}) sign a {noun} on {date}: {money}{per}, {term}.",
        "A {noun} for {term} starting {date} binds {payer} as {payer_role} to pay {money}{per} to {payee} "
        "as {payee_role}.",
        'It is agreed on {date} that {payer} ("{payer_role}") pays {money}{per} to {payee} '
        '("{payee_role}") for a term of {term} under this {noun}.',
        "{payee} is the {payee_role} and {payer} is the {payer_role} under a {noun} executed {date}; "
        "the {payer_role} owes {money}{per} over {term}.",
        "Effective {date}, the parties {payer} ({payer_role}) and {payee} ({payee_role}) agree to a {noun} "
        "of {term} at {money}{per}.",
        # The same constructions with the parties the other way round, and phrasings that name the
        # roles apart from the names: whoever pays must be read from the roles, not from the order.
        'This {noun} is made on {date} between {payer} (the "{payer_role}") and {payee} (the "{payee_role}"); '
        "the {payer_role} shall pay {money}{per} for {term}.",
        "{payer} ({payer_role}) and {payee} ({payee_role}) sign a {noun} on {date}: {money}{per}, {term}.",
        "{payee_role}: {payee}. {payer_role}: {payer}. {noun} of {date}, {term}, at {money}{per}.",
        "The {payee_role} under this {noun} is {payee}; the {payer_role} is {payer}. Signed {date}. "
        "Payment: {money}{per} for {term}.",
        "{date} - {noun} - {payer} (as {payer_role}) pays {payee} (as {payee_role}) {money}{per}; "
        "duration {term}.",
        "Between {payer}, the {payer_role}, and {payee}, the {payee_role}: a {noun} dated {date} at "
        "{money}{per} for a period of {term}.",
        "{payee} agrees to {verb} {payer} from {date} for {term}. Price: {money}{per}, paid by the "
        "{payer_role} to the {payee_role}.",
        "Memorandum of {noun}, {date}. The {payer_role}: {payer}. The {payee_role}: {payee}. "
        "Sum: {money}{per}. Length: {term}.",
        "{payer} shall pay {money}{per} to {payee} for {term} under the {noun} of {date}, {payer} being "
        "the {payer_role} and {payee} the {payee_role}.",
        "The {payee_role}, {payee}, and the {payer_role}, {payer}, entered into a {noun} on {date} for "
        "{term}; the fee is {money}{per}.",
        "Re: {noun} ({date}). {payer} [{payer_role}] to pay {payee} [{payee_role}] {money}{per} over {term}.",
        "A term of {term} from {date} applies to this {noun}, under which {payer}, the {payer_role}, pays "
        "{payee}, the {payee_role}, {money}{per}.",
        "{payee} (in the role of {payee_role}) and {payer} (in the role of {payer_role}) have signed a {noun} "
        "on {date} for {term} at {money}{per}.",
        "{term} of {noun} from {date}: {payer}, {payer_role}, owes {payee}, {payee_role}, {money}{per}.",
        "{payer} retains {payee} on {date}: {payee} will {verb} {payer} for {term} in exchange for "
        "{money}{per} ({noun}; {payer_role}: {payer}; {payee_role}: {payee}).",
    ],
    "test": [
        'By this {noun}, entered into on {date}, {payer} (hereinafter the "{payer_role}") undertakes to pay '
        '{payee} (hereinafter the "{payee_role}") {money}{per} throughout {term}.',
        "{payee}, acting as {payee_role}, and {payer}, acting as {payer_role}, hereby conclude a {noun} "
        "commencing {date}, running {term}, for {money}{per}.",
        "WHEREAS on {date} the {payer_role} {payer} engaged the {payee_role} {payee} under a {noun}, "
        "the sum of {money}{per} is payable for {term}.",
        "For {term} from {date}, {payee} will {verb} {payer}; in return the {payer_role} ({payer}) remits "
        "{money}{per} to the {payee_role} ({payee}) per this {noun}.",
    ],
}


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _render_date(rng: random.Random, year: int, month: int, day: int) -> str:
    name = _MONTHS[month - 1]
    style = rng.randrange(4)
    if style == 0:
        return f"{day} {name} {year}"
    if style == 1:
        return f"{name} {day}, {year}"
    if style == 2:
        return f"the {_ordinal(day)} of {name} {year}"
    return f"{_ordinal(day)} {name} {year}"


def _render_term(rng: random.Random) -> tuple[str, int]:
    """A contract term as words and as months: ``"2 years"`` -> 24, ``"18 months"`` -> 18."""
    if rng.random() < 0.5:
        years = rng.randint(1, 5)
        return (f"{years} year" if years == 1 else f"{years} years"), 12 * years
    months = rng.choice([3, 6, 9, 18, 30, 36, 48]) if rng.random() < 0.5 else rng.randint(2, 59)
    if months % 12 == 0 and rng.random() < 0.5:  # sometimes "24 months" instead of "2 years"
        return f"{months} months", months
    return f"{months} months", months


def _party(rng: random.Random, split: str) -> str:
    if rng.random() < 0.5:
        return f"{rng.choice(_FIRST[split])} {rng.choice(_LAST[split])}"
    return f"{rng.choice(_COMPANY_WORD[split])} {rng.choice(_COMPANY_SUFFIX[split])}"


def _amount(rng: random.Random, kind: ContractType) -> int:
    # Monthly rents and fees are hundreds to thousands; one-off sales and salaries are larger.
    if kind.per == "per month":
        return rng.randrange(300, 9000, 5)
    return rng.randrange(1000, 250000, 50)


def make_example(rng: random.Random, split: str) -> dict[str, Any]:
    """One example of ``split`` ("train" or "test") drawn with ``rng``.

    Returns a dict with ``sentence`` (str), ``record`` (dict, keys in :data:`FIELDS` order),
    ``answer`` (the record as one line of JSON) and ``template`` (the template's index in its split).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kind = rng.choice(CONTRACT_TYPES)
    payer = _party(rng, split)
    payee = _party(rng, split)
    while payee == payer:
        payee = _party(rng, split)
    year, month, day = rng.randint(2019, 2031), rng.randint(1, 12), rng.randint(1, 28)
    amount = _amount(rng, kind)
    currency = rng.choice(sorted(_CURRENCIES))
    money = rng.choice(_CURRENCIES[currency]).format(a=f"{amount:,}")
    term, months = _render_term(rng)
    template_id = rng.randrange(len(_TEMPLATES[split]))
    sentence = _TEMPLATES[split][template_id].format(
        date=_render_date(rng, year, month, day),
        payer=payer,
        payee=payee,
        payer_role=kind.payer_role,
        payee_role=kind.payee_role,
        noun=kind.noun,
        verb=kind.verb,
        money=money,
        per=f" {kind.per}" if kind.per else "",
        term=term,
    )
    record = {
        "type": kind.name,
        "payer": payer,
        "payee": payee,
        "amount": amount,
        "currency": currency,
        "date": f"{year:04d}-{month:02d}-{day:02d}",
        "months": months,
    }
    return {"sentence": sentence, "record": record, "answer": format_record(record), "template": template_id}


def format_record(record: dict[str, Any]) -> str:
    """The canonical answer: the record as one line of JSON, keys in :data:`FIELDS` order."""
    missing = [k for k in FIELDS if k not in record]
    if missing:
        raise ValueError(f"record is missing {missing}")
    return json.dumps({k: record[k] for k in FIELDS}, ensure_ascii=False, separators=(",", ":"))


def make_examples(n: int, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """``n`` examples of ``split``, reproducible from ``seed`` (the split is mixed into the seed,
    so train and test draw different streams even with the same ``seed``)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = random.Random(f"lora101-contracts/{split}/{seed}")
    return [make_example(rng, split) for _ in range(n)]


def build_messages(sentence: str, answer: str | None = None) -> list[dict[str, str]]:
    """The chat for one example: a short system prompt, the sentence as the user turn, and the
    answer as the assistant turn when given (training) or absent (generation)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": sentence}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def build_dataset(
    tokenizer=None, n_train: int = 1200, n_test: int = 80, seed: int = 0, max_length: int = 192
):
    """The task as a ``datasets.DatasetDict`` with ``train`` and ``test`` splits.

    Columns: ``sentence``, ``answer`` (canonical JSON), ``template`` and, when a ``tokenizer`` is
    given, ``input_ids``, ``attention_mask`` and ``labels`` (variable length, prompt masked with -100).
    """
    from datasets import Dataset, DatasetDict

    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = make_examples(n, split, seed)
        columns: dict[str, list] = {
            "sentence": [r["sentence"] for r in rows],
            "answer": [r["answer"] for r in rows],
            "template": [r["template"] for r in rows],
        }
        if tokenizer is not None:
            encoded = [
                tokenize_example(tokenizer, build_messages(r["sentence"]), r["answer"], max_length)
                for r in rows
            ]
            for key in ("input_ids", "attention_mask", "labels"):
                columns[key] = [e[key] for e in encoded]
        splits[split] = Dataset.from_dict(columns)
    return DatasetDict(splits)


def entity_words(split: str) -> set[str]:
    """Every entity word (first names, surnames, company words and suffixes) ``split`` draws from."""
    words: set[str] = set()
    for table in (_FIRST, _LAST, _COMPANY_WORD, _COMPANY_SUFFIX):
        words.update(table[split])
    return words


def templates(split: str) -> list[str]:
    """The sentence templates of ``split`` (the two splits share none)."""
    return list(_TEMPLATES[split])
