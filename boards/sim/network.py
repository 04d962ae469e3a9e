# `network` for the simulated board: the subset of MicroPython's ESP32 network module that
# washpay's board layer uses. The station interface's link follows the bench's network flag
# (`washpay sim ctl net up|down`); sockets themselves are the unix port's real ones to
# loopback, so the firmware's connectivity manager closes its connection when isconnected()
# turns false, as it must when an ESP32 loses its access point.
import simhw

STA_IF = 0
AP_IF = 1

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201


def _up():
    b = simhw.bench
    if b is None:
        return True  # no simulated hardware (a bare micropython run): the host's network
    b.poll()
    return b.net_up


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self.interface = interface_id
        self._active = False
        self._ssid = None
        self.connects = 0

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        self._ssid = ssid
        self.connects += 1

    def disconnect(self):
        self._ssid = None

    def isconnected(self):
        return self._active and _up()

    def status(self, param=None):
        if param == "rssi":
            return -55 if self.isconnected() else 0
        if not self._active:
            return STAT_IDLE
        return STAT_GOT_IP if _up() else STAT_NO_AP_FOUND

    def ifconfig(self, *args):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kw):
        if args and args[0] == "ssid":
            return self._ssid or ""
        if args and args[0] == "mac":
            return b"\x24\x0a\xc4\x00\x00\x01"
        return None
