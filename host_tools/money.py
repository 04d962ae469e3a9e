"""How the host tools show money to a person: in the currency's major units, with the currency
("2.50 EUR"), from the minor units that boards, cards, journals and the ledger keep (250).

Machine-readable output (journal jsonl/csv, `--json`, `--format json`) keeps minor units;
everything a person reads goes through `money()` (or `major()` under a column that names the
currency). A board's config.json says how many decimals its currency has (`decimals`); a
journal record or a ledger row carries only the currency code, so for those the number of
decimals is the currency's own (ISO 4217), as `decimals()` gives it.
"""

DEFAULT_CURRENCY = "EUR"  # the firmware's default (firmware/washpay/config.py)

# ISO 4217 currencies whose minor unit is not a hundredth; every other has 2 decimals
_DECIMALS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}


def decimals(currency):
    """How many decimals the currency's major unit has (2 for EUR: 250 is 2.50)."""
    return _DECIMALS.get((currency or DEFAULT_CURRENCY).upper(), 2)


def major(amount, currency=DEFAULT_CURRENCY, places=None):
    """`amount` minor units as a number of major units, without the currency: "2.50",
    "-3.00", "500" (JPY). None or "" (a field a record does not have) stays ""."""
    if amount is None or amount == "":
        return ""
    places = decimals(currency) if places is None else places
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(int(amount)), 10**places)
    return f"{sign}{whole}.{part:0{places}d}" if places else f"{sign}{whole}"


def money(amount, currency=DEFAULT_CURRENCY, places=None):
    """`amount` minor units as a person reads it: "2.50 EUR"."""
    text = major(amount, currency, places)
    return f"{text} {(currency or DEFAULT_CURRENCY).upper()}" if text else ""
