# Tier overrides: the tier a card pays at on this board, pushed by the server ("tiers",
# docs/sync.md action 8) from the cards' credit scores (docs/pricing.md, "Credit score and
# tiers"). A card's own tier is in its header under the MAC and changes only with the card
# in a reader; an override here outranks it until the server clears it. /tiers.bin is a
# card list (cardlist.py; docs/blacklist-format.md, "Tier overrides") of 19-byte entries:
# the UID key and the tier's name (the price table's tier key, at most 8 ASCII bytes, as in
# the card header), binary-searched in the file: no RAM for the list.
from washpay.cardlists import KEY_SIZE, CardList, CardListError

MAGIC = b"WPTL"
TIER_LEN = 8
ENTRY_SIZE = 19  # KEY_SIZE + TIER_LEN; not a const(), as in blacklist.py
LIMIT = 1024  # cards: 19 KiB of flash, twice that while a change is written


def check_tier(name):
    """The tier name as bytes (1 to 8 printable ASCII, no space), else CardListError."""
    b = name.encode() if isinstance(name, str) else bytes(name)
    if not 0 < len(b) <= TIER_LEN:
        raise CardListError("a tier name has 1 to 8 bytes")
    for c in b:
        if not 0x21 <= c <= 0x7E:
            raise CardListError("a tier name is printable ASCII")
    return b


class TierList(CardList):
    MAGIC = MAGIC
    ENTRY_SIZE = ENTRY_SIZE
    LIMIT = LIMIT
    FILE = "tiers.bin"
    KIND = "tier list"
    LABEL = "tier list"

    def __init__(self, path="/tiers.bin"):
        super().__init__(path)

    def lookup(self, uid):
        """The tier name that overrides this card's own, or None."""
        if not self._find(uid):
            return None
        return _name(self._ent)

    def entries(self):
        """Yield (uid, tier name) in file order."""
        for uid, ent in self._entries():
            yield uid, _name(ent)

    def update(self, add=(), remove=()):
        """Set (uid, tier name) overrides and remove UIDs, in one atomic rewrite (a list
        past LIMIT cards is refused whole: CardListError). Returns the count."""
        changes = {}
        for uid in remove:
            changes[bytes(uid)] = None
        for uid, name in add:
            t = check_tier(name)
            changes[bytes(uid)] = t + bytes(TIER_LEN - len(t))
        return self._merge(changes)


def _name(ent):
    t = bytes(ent[KEY_SIZE:])
    end = t.find(b"\x00")
    if end >= 0:
        t = t[:end]
    try:
        return t.decode() or None
    except ValueError:  # not text: a damaged entry overrides nothing
        return None
