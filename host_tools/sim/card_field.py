"""The cards of a simulated board, kept on the host side of `washpay sim run`.

A card is a physical object: what the board writes to it must survive the board's power cuts
and resets, and a card lying on the reader is still there when the board comes back. The
reader model (boards/sim/sim_mfrc522.py) runs inside the firmware process and reports every
change of a card's memory; this keeps each card's image in STATE/cards/<uid>.json and puts
the card that is on the reader back into every new firmware process.
"""

import json
from pathlib import Path


class CardField:
    def __init__(self, state_dir):
        self.dir = Path(state_dir) / "cards"
        self.on_reader = None  # image of the card in the reader's field, or None

    def _path(self, uid_hex):
        return self.dir / f"{uid_hex.lower()}.json"

    def load(self, uid_hex):
        try:
            return json.loads(self._path(uid_hex).read_text())
        except FileNotFoundError:
            return None

    def save(self, image):
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(image["uid"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(image))
        tmp.replace(self._path(image["uid"]))

    # ---- from the firmware process
    def on_event(self, msg):
        if msg.get("ev") == "card":
            self.save(msg["image"])
            self.on_reader = msg["image"]
        elif msg.get("ev") == "card_left":
            self.on_reader = None

    def replay(self):
        """The request that puts the card back on the reader of a new firmware process."""
        if self.on_reader is None:
            return None
        return {"op": "card", "action": "tap", "image": self.on_reader}

    # ---- from `washpay sim ctl card ...`
    def request(self, req, board_on, at_repl=False):
        """(request to forward to the firmware process or None, reply now or None); both
        when the board sits at its REPL: nothing there answers until code touches the
        reader, which then finds the card placed or gone."""
        fwd, reply = self._request(req, board_on)
        if at_repl and board_on and fwd is not None and reply is None:
            action = fwd.get("action")
            if action in ("tap", "remove", "noise"):
                image = fwd.get("image") or {}
                return fwd, {"ok": True, "uid": image.get("uid", fwd.get("uid")), "repl": True}
            if action == "dump":
                return None, (self._request(fwd, False)[1])
        return fwd, reply

    def _request(self, req, board_on):
        action = req.get("action")
        if action == "tap":
            image = req.get("image")
            if image is None:
                uid = str(req.get("uid", "")).lower()
                if len(uid) not in (8, 14) or any(c not in "0123456789abcdef" for c in uid):
                    return None, {"ok": False,
                                  "error": f"a card UID is 4 or 7 bytes in hex, not {uid!r}"}
                image = self.load(uid)  # a card seen before keeps its memory
            if image is not None:
                self.save(image)  # tapping an image file restores that dump onto the card
                self.on_reader = image
                fwd = {**req, "image": image}
                fwd.pop("uid", None)
            else:
                fwd = req  # a new blank card: the reader model makes it and reports it
            if not board_on:
                if image is None:
                    return None, {"ok": False, "error": "the board is off: tap a new card "
                                  "once it is on (cards seen before can be tapped any time)"}
                return None, {"ok": True, "uid": image["uid"], "board": "off"}
            return fwd, None
        if action == "remove":
            if req.get("after_exchanges") is None:
                if self.on_reader is None:
                    return None, {"ok": False, "error": "no card is on the reader"}
                self.on_reader = None
                if not board_on:
                    return None, {"ok": True, "removed": True, "board": "off"}
            return req, None
        if action == "dump" and not board_on:
            uid = req.get("uid")
            image = self.load(uid) if uid else self.on_reader
            if image is None:
                return None, {"ok": False, "error": "no card is on the reader"}
            return None, {"ok": True, "image": image}
        if action == "dump" and req.get("uid"):
            image = self.load(req["uid"])
            if image is None:
                return None, {"ok": False, "error": f"no card {req['uid']} was ever tapped"}
            return None, {"ok": True, "image": image}
        return req, None
