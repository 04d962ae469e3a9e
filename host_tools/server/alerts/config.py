"""The "alerts" object of the server config file (docs/alerts.md, "Config"): thresholds,
where notices go, how hard delivery tries, the customers' low-balance notice.

    cfg = parse(doc.get("alerts"))   # AlertConfigError says what to fix

Everything has a default, so `{}` (or no "alerts" key) gives the rules their defaults and
no destinations: alerts are kept and listed, nothing is sent.
"""

RULES = ("offline", "start_failed", "coin_rejects", "journal_full", "card_fraud",
         "card_lockout", "refund", "release_rollback")

DEFAULTS = {
    "offline_after_min": 10,
    "coin_rejects": {"burst": 5, "window_s": 120},
    "journal_backlog": 2000,
    "check_every_s": 10.0,
    "webhooks": [],
    "sms": [],
    "sms_gateway": None,
    "delivery": {"max_attempts": 6, "backoff_s": 5.0, "backoff_max_s": 900.0,
                 "timeout_s": 10.0},
    "low_balance": None,
}
LOW_BALANCE_TEXT = ("Your laundry card {card} has {balance} left. Top it up before your "
                    "next wash.")
KEYS = tuple(DEFAULTS)


class AlertConfigError(ValueError):
    """The "alerts" config cannot be used; the message names the key and what to write."""


def _number(v, where, lo, hi, whole=False):
    ok = isinstance(v, int) if whole else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or not lo <= v <= hi:
        kind = "a whole number" if whole else "a number"
        raise AlertConfigError(f"alerts.{where} must be {kind} from {lo} to {hi}")
    return v


def _rules(d, where):
    rules = d.get("rules", list(RULES))
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise AlertConfigError(f"alerts.{where}.rules must be a list of rule names")
    for r in rules:
        if r not in RULES:
            raise AlertConfigError(f"alerts.{where}.rules: unknown rule {r!r} (rules: "
                                   f"{', '.join(RULES)})")
    return tuple(rules)


def _only(d, where, keys):
    if not isinstance(d, dict):
        raise AlertConfigError(f"alerts.{where} must be an object")
    extra = sorted(set(d) - set(keys))
    if extra:
        raise AlertConfigError(f"alerts.{where}: unknown key {extra[0]!r} (keys: "
                               f"{', '.join(keys)})")


def _url(v, where):
    if not isinstance(v, str) or not v.startswith(("http://", "https://")):
        raise AlertConfigError(f"alerts.{where} must be an http:// or https:// URL")
    return v


def parse(doc):
    """The validated alerts config (a new dict, defaults filled in)."""
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise AlertConfigError("alerts must be a JSON object (docs/alerts.md, \"Config\")")
    extra = sorted(set(doc) - set(KEYS))
    if extra:
        raise AlertConfigError(f"alerts: unknown key {extra[0]!r} (keys: {', '.join(KEYS)})")
    cfg = {k: doc.get(k, v) for k, v in DEFAULTS.items()}
    _number(cfg["offline_after_min"], "offline_after_min", 1, 10080)
    cr = {**DEFAULTS["coin_rejects"], **(cfg["coin_rejects"] or {})}
    _only(cr, "coin_rejects", ("burst", "window_s"))
    _number(cr["burst"], "coin_rejects.burst", 2, 1000, whole=True)
    _number(cr["window_s"], "coin_rejects.window_s", 1, 86400)
    cfg["coin_rejects"] = cr
    _number(cfg["journal_backlog"], "journal_backlog", 1, 10**7, whole=True)
    _number(cfg["check_every_s"], "check_every_s", 0.05, 3600)
    dl = {**DEFAULTS["delivery"], **(cfg["delivery"] or {})}
    _only(dl, "delivery", tuple(DEFAULTS["delivery"]))
    _number(dl["max_attempts"], "delivery.max_attempts", 1, 100, whole=True)
    _number(dl["backoff_s"], "delivery.backoff_s", 0.01, 86400)
    _number(dl["backoff_max_s"], "delivery.backoff_max_s", dl["backoff_s"], 7 * 86400)
    _number(dl["timeout_s"], "delivery.timeout_s", 0.1, 120)
    cfg["delivery"] = dl
    hooks = []
    if not isinstance(cfg["webhooks"], list):
        raise AlertConfigError("alerts.webhooks must be a list of {\"url\", \"secret\"}")
    for i, h in enumerate(cfg["webhooks"]):
        at = f"webhooks[{i}]"
        _only(h, at, ("url", "secret", "rules"))
        secret = h.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            raise AlertConfigError(f"alerts.{at}.secret: a shared secret of at least 16 "
                                   "characters (the receiver checks signatures with it)")
        hooks.append({"url": _url(h.get("url"), f"{at}.url"), "secret": secret,
                      "rules": _rules(h, at)})
    cfg["webhooks"] = hooks
    sms = []
    if not isinstance(cfg["sms"], list):
        raise AlertConfigError("alerts.sms must be a list of {\"to\": PHONE}")
    for i, s in enumerate(cfg["sms"]):
        at = f"sms[{i}]"
        _only(s, at, ("to", "rules"))
        sms.append({"to": phone(s.get("to"), f"alerts.{at}.to"), "rules": _rules(s, at)})
    cfg["sms"] = sms
    gw = cfg["sms_gateway"]
    if gw is not None:
        _only(gw, "sms_gateway", ("url", "token", "from"))
        if not isinstance(gw.get("token"), str) or not gw["token"]:
            raise AlertConfigError("alerts.sms_gateway.token: the gateway's API token")
        cfg["sms_gateway"] = {"url": _url(gw.get("url"), "sms_gateway.url").rstrip("/"),
                              "token": gw["token"], "from": gw.get("from")}
    if (sms or cfg["low_balance"]) and cfg["sms_gateway"] is None:
        raise AlertConfigError("alerts: SMS notices need alerts.sms_gateway "
                               "({\"url\", \"token\"})")
    lb = cfg["low_balance"]
    if lb is not None:
        _only(lb, "low_balance", ("threshold", "text"))
        lb = {"threshold": lb.get("threshold", 500),
              "text": lb.get("text", LOW_BALANCE_TEXT)}
        _number(lb["threshold"], "low_balance.threshold", 1, 10**9, whole=True)
        if not isinstance(lb["text"], str) or not lb["text"].strip():
            raise AlertConfigError("alerts.low_balance.text: the message, with {card} and "
                                   "{balance}")
        try:
            lb["text"].format(card="x", balance="y")
        except (KeyError, IndexError, ValueError) as e:
            raise AlertConfigError(f"alerts.low_balance.text: only {{card}} and {{balance}} "
                                   f"may be filled in ({e})") from None
        cfg["low_balance"] = lb
    return cfg


def phone(v, where="phone"):
    """A phone number in E.164 form (+ and 8 to 15 digits): what SMS gateways take."""
    if not isinstance(v, str):
        raise AlertConfigError(f"{where}: a phone number such as +4915112345678")
    t = v.replace(" ", "").replace("-", "")
    if not (t.startswith("+") and t[1:].isdigit() and 8 <= len(t) - 1 <= 15):
        raise AlertConfigError(f"{where} {v!r}: an international number, + and 8 to 15 "
                               "digits, such as +4915112345678")
    return t
