# washpay: payment-module firmware for washing machines and dryers (ESP32, MicroPython).
VERSION = "0.1.0"


def forget(name):
    # Unload a module after its one use (boot recovery, the config check): its functions and
    # tables go back to the heap, and the next use imports it again. The names it interned
    # stay (MicroPython never frees a qstr).
    import sys

    sys.modules.pop(name, None)
    pkg, _, leaf = name.rpartition(".")
    pkg = sys.modules.get(pkg)
    if pkg is not None and leaf in pkg.__dict__:
        delattr(pkg, leaf)
