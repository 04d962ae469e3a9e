# The washer interface: the relay that starts the machine and the inputs that tell whether
# it runs (busy / door-lock signal) and whether its door is closed. Three wirings exist in
# the field (see the board's washer profile):
#   contact - close the machine's start contact for pulse_ms
#   power   - switch the machine's supply on for the paid cycle (dryers, old mechanical
#             washers), off at the end
#   coin    - emulate coin pulses into the machine's own coin input
# No payment logic here: the vend engine decides when to start.
import asyncio


class Washer:
    def __init__(self, relay, busy, door, profile):
        self.relay = relay
        self.busy_pin = busy
        self.door_pin = door
        self.mode = profile["start_mode"]
        self.pulse_ms = profile.get("pulse_ms", 500)
        self._relay_on = 1 if profile.get("relay_active", "high") == "high" else 0
        self._busy_level = 1 if profile.get("busy_active", "high") == "high" else 0
        self._closed_level = 1 if profile.get("door_closed", "low") == "high" else 0
        self.coin_pulse_ms = profile.get("coin_pulse_ms", 50)
        self.coin_gap_ms = profile.get("coin_gap_ms", 50)
        self.coin_value = profile.get("coin_value", 0)
        self.relay_off()

    def relay_off(self):
        self.relay.value(1 - self._relay_on)

    def relay_on(self):
        self.relay.value(self._relay_on)

    def busy(self):
        return self.busy_pin.value() == self._busy_level

    def door_closed(self):
        return self.door_pin.value() == self._closed_level

    async def start(self, price):
        """Drive one start attempt; for `power` the relay stays on until stop()."""
        if self.mode == "contact":
            self.relay_on()
            await asyncio.sleep_ms(self.pulse_ms)
            self.relay_off()
        elif self.mode == "power":
            self.relay_on()
        elif self.mode == "coin":
            n = (price + self.coin_value - 1) // self.coin_value if self.coin_value else 1
            for _ in range(n):
                self.relay_on()
                await asyncio.sleep_ms(self.coin_pulse_ms)
                self.relay_off()
                await asyncio.sleep_ms(self.coin_gap_ms)
        else:
            raise ValueError("unknown washer start mode %r" % self.mode)

    def stop(self):
        """End of a paid cycle: a power-gated machine loses its supply; others need nothing."""
        if self.mode == "power":
            self.relay_off()
