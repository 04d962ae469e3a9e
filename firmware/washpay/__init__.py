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


def use(mods, fn, *args):
    # Call function `fn` of the module mods[0] with `args`, then forget every module in
    # `mods` (the one called and those it loaded only for this call): code that runs for a
    # scan or a server command is in the heap only while it runs. Nothing it returns may
    # hold one of its functions or class instances, or the module stays (and a second copy
    # comes with the next use).
    import sys

    __import__(mods[0])
    try:
        return getattr(sys.modules[mods[0]], fn)(*args)
    finally:
        for m in mods:
            forget(m)
